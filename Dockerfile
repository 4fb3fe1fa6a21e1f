# crds-job: warm a CRDS cache from S3, then exec the calibration command.
#
#   standalone:  docker build -t crds-job .
#                docker run --rm -v crds-cache:/crds-cache crds-job roman ops
#   layered on your calibration image (Debian/Ubuntu based, python3 >= 3.11 with pip >= 22.3):
#                docker build --target layered --build-arg BASE_IMAGE=<romancal or HST image> -t calib-crds .
#                docker run --rm calib-crds roman ops -- strun romancal.pipeline.ExposurePipeline l1_img.asdf
#
# Everything crds-job brings lives in /opt/crds-job: a virtual environment of its own (made with
# the base's Python, in the first stage, from wheels of the lock), tini and the entry point. The
# final stages only copy that folder in: no pip runs there, so no package of the base is
# replaced, upgraded or downgraded, and the image carries no compiler, wheel or pip cache.

ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# A calibration image may end as a user who cannot write /wheels or /opt. Root only in this
# stage, which the image does not keep.
# hadolint ignore=DL3002
USER 0
SHELL ["/bin/sh", "-eux", "-c"]
# tini is PID 1: it forwards signals to crds-job and, after the exec, to the calibration command,
# and reaps zombies. Its static build runs on any base. TINI_VERSION="" on a distribution that
# has another version.
ARG TINI_VERSION=0.19.0-1+b3
# What the base must have, said at once rather than as a failure deep in pip.
RUN python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "crds-job needs the base's python3 to be 3.11 or newer, not $(python3 --version 2>&1)" >&2; exit 1; } \
 && python3 -m pip --python /bin/true --version >/dev/null 2>&1 \
    || { echo "crds-job needs the base's pip to be 22.3 or newer (pip --python), not $(python3 -m pip --version 2>&1)" >&2; exit 1; } \
 && apt-get update \
 && apt-get install -y --no-install-recommends "tini${TINI_VERSION:+=$TINI_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
# The crds library chooses an input dataset's references. auto: the base's own crds where it has
# one (a calibration image: it chooses as the calibration will), else crds-job's; crds: always
# crds-job's; "" (empty): none, for a warm-only image.
ARG EXTRAS=auto
WORKDIR /src
COPY requirements/runtime.lock requirements/runtime.lock
COPY pyproject.toml README.md ./
# Wheels of only what the chosen extras need, at the lock's versions. The package is still
# empty here (its metadata is enough), so this layer is rebuilt only when the lock changes.
RUN extras="$EXTRAS"; \
    if [ "$extras" = auto ]; then \
        if python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("crds") is None)'; then extras=; else extras=crds; fi; \
    fi; \
    echo "$extras" > /extras \
 && python3 -m pip wheel --no-cache-dir --wheel-dir /wheels --constraint requirements/runtime.lock ".${extras:+[$extras]}" \
 && rm /wheels/crds_job-*.whl
COPY crds_job crds_job
COPY entrypoint.py ./
# The venv sees the base's packages after its own (a .pth file adding the base's site-packages,
# with the .pth files in them: an editable install's): a crds it lacks is the calibration's.
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python3 -m venv --without-pip /opt/crds-job \
 && extras=$(cat /extras) \
 && python3 -m pip --python /opt/crds-job/bin/python install --no-cache-dir --no-index --find-links /wheels \
        "$(echo /wheels/crds_job-*.whl)${extras:+[$extras]}" \
 && python3 -c 'import site; print(*(f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()), sep="\n")' \
        > "$(/opt/crds-job/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/calibration.pth" \
 && sed '1s|.*|#!/opt/crds-job/bin/python|' entrypoint.py > /opt/crds-job/entrypoint.py \
 && chmod 0755 /opt/crds-job/entrypoint.py \
 && cp /usr/bin/tini-static /opt/crds-job/bin/tini \
 && mkdir -p /image \
 && mkdir -m 1777 /image/crds-cache

# What both images add to their base: /opt/crds-job (copied as itself: the base's /opt keeps its
# owner and mode), and the cache's mount point, writable by whatever user the base runs as (copied
# as the content of a folder, so that its own mode, 1777, is kept).
FROM ${BASE_IMAGE} AS app
COPY --from=build /opt/crds-job /opt/crds-job
COPY --from=build /image/ /
ENV CRDS_PATH=/crds-cache
ENTRYPOINT ["/opt/crds-job/bin/tini", "--", "/opt/crds-job/entrypoint.py"]

# Layered: the base as it was (its packages, user, working directory, PATH, labels) plus the above.
FROM app AS layered
VOLUME ["/crds-cache"]

# Standalone (the default target): crds-job's own image, as a numeric non-root user. The cache's
# mount point is its user's before VOLUME, which would discard any later change to it.
FROM app AS standalone
LABEL org.opencontainers.image.title="crds-job" \
      org.opencontainers.image.description="Warm a CRDS cache from S3, checksum-checked, then exec the calibration command" \
      org.opencontainers.image.licenses="BSD-3-Clause"
ARG APP_UID=10001
USER 0
# A base with a user of that UID already (the default target built on a calibration image): it is the one used.
RUN { getent passwd "${APP_UID}" >/dev/null || useradd --uid "${APP_UID}" --no-create-home --shell /usr/sbin/nologin crds; } \
 && mkdir -p /home/crds \
 && chown "${APP_UID}" /crds-cache /home/crds \
 && chmod 0755 /crds-cache
ENV PYTHONUNBUFFERED=1
VOLUME ["/crds-cache"]
USER ${APP_UID}
WORKDIR /home/crds
