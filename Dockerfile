# syntax=docker/dockerfile:1.7
#
# crds-job: warm a CRDS cache from S3, then exec the calibration command.
#
#   standalone:  docker build -t crds-job .
#                docker run --rm -v crds-cache:/crds-cache crds-job roman ops
#   layered on your calibration image (Debian/Ubuntu based, python3 >= 3.11 with pip, in a venv or
#   conda: pip refuses to install into a distribution's own Python, PEP 668):
#                docker build --build-arg BASE_IMAGE=<romancal or HST calibration image> \
#                             --build-arg EXTRAS= -t calib-crds .
#                docker run --rm calib-crds roman ops -- strun romancal.pipeline.ExposurePipeline l1_img.asdf
#
# The wheels are built in a first stage from the same base, so compiled dependencies match the
# final Python; the final stage installs them offline and carries no compiler and no pip cache.

ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# A calibration image may end as a user who cannot write /wheels or /src. Root only in this
# stage, which the image does not keep.
# hadolint ignore=DL3002
USER 0
WORKDIR /src
COPY requirements/runtime.lock requirements/runtime.lock
RUN python3 -m pip wheel --no-cache-dir --wheel-dir /wheels -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY crds_job crds_job
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
# tini is PID 1: it forwards signals to crds-job and, after the exec, to the calibration command,
# and reaps zombies. Set TINI_VERSION="" on a base whose distribution has another version.
ARG TINI_VERSION=0.19.0-1+b3
# The crds library, for warming only the references of the input datasets. A calibration image
# has its own crds: layer with EXTRAS="" to keep it as it is.
ARG EXTRAS=crds
ARG APP_UID=10001
LABEL org.opencontainers.image.title="crds-job" \
      org.opencontainers.image.description="Warm a CRDS cache from S3, checksum-checked, then exec the calibration command" \
      org.opencontainers.image.licenses="BSD-3-Clause"
USER 0
SHELL ["/bin/sh", "-eux", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends "tini${TINI_VERSION:+=$TINI_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
# Pinned by construction: --no-index installs only the wheels the build stage made from the lock.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    set -- /wheels/crds_job-*.whl \
 && python3 -m pip install --no-cache-dir --no-index --find-links /wheels "$1${EXTRAS:+[$EXTRAS]}"
COPY entrypoint.py /opt/crds-job/entrypoint.py
# A base image may have a user with that UID already (layered mode): it is then the one used.
RUN getent passwd "${APP_UID}" >/dev/null \
    || useradd --uid "${APP_UID}" --no-create-home --shell /usr/sbin/nologin crds \
 && mkdir -p /crds-cache /home/crds \
 && chown "${APP_UID}" /crds-cache /home/crds
ENV CRDS_PATH=/crds-cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/crds-cache"]
USER ${APP_UID}
WORKDIR /home/crds
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/crds-job/entrypoint.py"]
