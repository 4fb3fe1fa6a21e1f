# A stand-in calibration image, for the layered build's test: like romancal's or HST's, it has a
# Python environment of its own (here a venv; conda's is alike) holding crds[aws] at versions that
# are not crds-job's lock's (crds 14.0.2, boto3/botocore 1.44.18 where the lock has 14.0.3 and
# 1.43.117), its own user and working directory, and an /opt of its user's. Layering crds-job
# on it must leave all of that as it was.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}
USER 0
SHELL ["/bin/sh", "-eux", "-c"]
RUN python3 -m venv /opt/calibration \
 && /opt/calibration/bin/pip install --no-cache-dir "crds[aws]==14.0.2" "boto3==1.44.18" "botocore==1.44.18" \
 && useradd --uid 2000 --create-home calibrator \
 && mkdir /work \
 && chown 2000 /work /opt \
 && chmod 0775 /opt
ENV PATH=/opt/calibration/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER calibrator
WORKDIR /work
