"""Where each observatory's CRDS files live: on S3, and on its CRDS server.

The S3 table is STScI's (the CRDS documentation, and the ``crds_s3_set`` script
that ships with the crds client): Roman ops is the public Open Data bucket,
Roman test/int/dev share a test bucket under per-environment prefixes, and HST
has one bucket per environment with no prefix. JWST has no S3 cache at all:
its files come from its CRDS server only. A private mirror overrides bucket
and prefix (``CRDS_S3_BUCKET`` / ``CRDS_S3_PREFIX``, as the crds client itself
reads them). Every observatory's CRDS server serves every environment's files
over HTTPS (``https://<obs>-crds.stsci.edu``, ``https://<obs>-crds-<env>...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from .errors import UsageError

#: The observatories crds-job warms, and their environments.
ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "roman": ("ops", "test", "int", "dev"),
    "hst": ("ops", "test"),
    "jwst": ("ops", "test"),
}

#: Observatories STScI mirrors to S3 (the others are served by their CRDS server alone).
WITH_S3 = frozenset({"roman", "hst"})

#: Buckets anyone may read: without credentials they are read unsigned, as
#: ``crds_s3_get`` does with ``--no-sign-request`` for this bucket.
PUBLIC_BUCKETS = frozenset({"stpubdata"})


#: A bucket name as the AWS SDK accepts one (S3's rules, with legacy names' capitals and
#: underscores): refused here as a usage error, not later as a malformed request.
BUCKET_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")


def serverless_url(observatory: str) -> str:
    """The "serverless" CRDS server URL: the client makes no JSON-RPC call to it."""
    return f"https://{observatory}-crds-serverless.stsci.edu"


def server_url(observatory: str, environment: str) -> str:
    """The CRDS server STScI runs for ``observatory``/``environment`` (ops: the bare name)."""
    suffix = "" if environment == "ops" else f"-{environment}"
    return f"https://{observatory}-crds{suffix}.stsci.edu"


@dataclass(frozen=True)
class Location:
    """One observatory/environment's cache on S3, and how to name its objects.

    ``bucket`` is empty where there is none (JWST, unless a private mirror is named).
    """

    observatory: str
    environment: str
    bucket: str
    prefix: str  # as crds writes it: "" or "/roman/crds"; never a trailing "/"
    #: A bucket holds a context as mappings, or (STScI's HST buckets) as a pickle.
    context_areas: ClassVar[tuple[str, ...]] = ("mappings", "pickles")

    @property
    def public(self) -> bool:
        return self.bucket in PUBLIC_BUCKETS

    @property
    def serverless_url(self) -> str:
        return serverless_url(self.observatory)

    def key(self, area: str, name: str = "") -> str:
        """The object key of ``name`` in ``area`` (config, mappings, references)."""
        parts = [self.prefix.strip("/"), area, self.observatory, name]
        return "/".join(part for part in parts if part)

    def uri(self, area: str, name: str = "") -> str:
        """The ``s3://`` URI of ``name`` in ``area``; a folder URI when ``name`` is empty."""
        return f"s3://{self.bucket}/{self.key(area, name)}"

    def path(self, area: str, name: str = "") -> str:
        """The fsspec path (``bucket/key``) of ``name`` in ``area``."""
        return f"{self.bucket}/{self.key(area, name)}"


def default_location(observatory: str, environment: str) -> tuple[str, str]:
    """The bucket and prefix STScI publishes for ``observatory``/``environment`` ("" where none)."""
    if observatory == "roman":
        if environment == "ops":
            return "stpubdata", "/roman/crds"
        return "stpubdata-tst", f"/roman/crds/{environment}"
    if observatory == "hst":
        return f"hst-crds-cache-{environment}", ""
    return "", ""


def check_observatory(observatory: str) -> str:
    """Refuse an observatory crds-job does not know, saying which it does."""
    obs = observatory.lower()
    if obs not in ENVIRONMENTS:
        raise UsageError(
            f"unknown observatory {observatory!r}",
            f"use one of: {', '.join(ENVIRONMENTS)}",
        )
    return obs


def locate(
    observatory: str,
    environment: str,
    bucket: str | None = None,
    prefix: str | None = None,
) -> Location:
    """Resolve where the cache of ``observatory``/``environment`` lives.

    ``bucket`` and ``prefix`` override the table for private mirrors; the
    observatory and environment are still checked, because the cache layout
    and the serverless URL depend on them.
    """
    obs = check_observatory(observatory)
    env = environment.lower()
    if env not in ENVIRONMENTS[obs]:
        raise UsageError(
            f"unknown environment {environment!r} for {obs}",
            f"use one of: {', '.join(ENVIRONMENTS[obs])}",
        )
    default_bucket, default_prefix = default_location(obs, env)
    bucket = bucket or default_bucket
    if bucket and not BUCKET_NAME.fullmatch(bucket):
        raise UsageError(f"{bucket!r} (CRDS_S3_BUCKET or --bucket) is not an S3 bucket name",
                         "give the bucket's name alone (letters, digits, '.', '-', '_'), without s3:// or a key")
    prefix = default_prefix if prefix is None else prefix
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    other = _published_as(bucket, prefix)
    if other is not None and other != (obs, env):
        # Most likely left in the shell by ``source crds_s3_set <other pair>``: it would warm that pair's files.
        raise UsageError(
            f"the bucket asked for, s3://{bucket}{prefix} (CRDS_S3_BUCKET/CRDS_S3_PREFIX, or --bucket/--prefix), "
            f"is STScI's cache of {' '.join(other)}, not of {obs} {env}",
            f"unset CRDS_S3_BUCKET and CRDS_S3_PREFIX (crds_s3_set exports them), or ask for {' '.join(other)}",
        )
    return Location(observatory=obs, environment=env, bucket=bucket, prefix=prefix)


def _published_as(bucket: str, prefix: str) -> tuple[str, str] | None:
    """The observatory/environment whose published cache is ``bucket`` and ``prefix``, if any."""
    for obs, envs in ENVIRONMENTS.items():
        for env in envs:
            if bucket and default_location(obs, env) == (bucket, prefix):
                return obs, env
    return None
