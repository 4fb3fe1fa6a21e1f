"""Fixtures: a real S3 server over HTTP on loopback, seeded buckets, and crds-job as a process.

Nothing of crds-job is patched: every end-to-end test runs ``python -m
crds_job`` in a subprocess against moto's S3 server, with the environment a
job would have.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from crds_job import cache as cache_module
from crds_job import durability, retention
from crds_job.sample import context, server
from crds_job.sample.context import render_mapping

# Fuzzing: bounded and reproducible in the suite; HYPOTHESIS_PROFILE=fuzz for a long random run.
settings.register_profile("suite", max_examples=300, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

ROMAN_PREFIX = "/roman/crds"


@pytest.fixture(scope="session")
def s3() -> server.LocalS3:
    with server.LocalS3("moto") as running:
        yield running


@dataclass
class Run:
    """A finished crds-job process: exit code, stdout, and its log lines parsed."""

    returncode: int
    stdout: str
    stderr: str
    logs: list[dict[str, Any]] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # non-JSON lines: the command's own stderr

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs if line.get("event") == name]

    def event(self, name: str) -> dict[str, Any]:
        found = self.events(name)
        assert found, f"no {name!r} log line in:\n{self.stderr}"
        return found[-1]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [line for line in self.logs if line.get("level") == "error"]


def parse_logs(stderr: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Split stderr into our JSON log lines and anything else (a command's own output)."""
    lines, foreign = [], []
    for text in stderr.splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            foreign.append(text)
    return lines, foreign


@dataclass
class Bucket:
    """A seeded bucket on the local server, and how to run crds-job against it."""

    s3: server.LocalS3
    name: str
    prefix: str
    sample: context.SampleBucket
    cache: str

    def key(self, relative: str) -> str:
        return f"{self.prefix.strip('/')}/{relative}".lstrip("/")

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
        base.update(self.s3.client_env())
        base.update({
            "CRDS_PATH": self.cache,
            "CRDS_S3_BUCKET": self.name,
            "CRDS_S3_PREFIX": self.prefix,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        })
        base.update(extra)
        return base

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120, **extra: str) -> Run:
        return run_job(list(args), env if env is not None else self.env(**extra), timeout=timeout)

    def put(self, relative: str, data: bytes) -> None:
        self.s3.client().put_object(Bucket=self.name, Key=self.key(relative), Body=data)

    def delete(self, relative: str) -> None:
        self.s3.client().delete_object(Bucket=self.name, Key=self.key(relative))

    def reseed_config(self) -> None:
        """Publish the sample's (possibly edited) server_config again."""
        self.put(f"config/{self.sample.observatory}/server_config", self.sample.server_config())

    def publish_metadata(self, changes: dict[str, dict[str, str]]) -> None:
        """Publish the sample's download metadata with ``changes`` (file name -> its entry) laid over it."""
        original = self.sample.metadata

        def metadata() -> dict[str, dict[str, str]]:
            return {**original(), **changes}

        self.sample.metadata = metadata  # type: ignore[method-assign]
        self.reseed_config()


def run_job(args: list[str], env: dict[str, str], timeout: float = 120) -> Run:
    done = subprocess.run([sys.executable, "-m", "crds_job", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(done.returncode, done.stdout, done.stderr, *parse_logs(done.stderr))


def new_bucket(s3: server.LocalS3, sample: context.SampleBucket, cache: str, prefix: str = ROMAN_PREFIX) -> Bucket:
    name = f"crds-{uuid.uuid4().hex[:16]}"
    server.seed(s3.client(), name, prefix, sample)
    return Bucket(s3=s3, name=name, prefix=prefix, sample=sample, cache=cache)


@pytest.fixture
def hst_datasets(tmp_path) -> dict[str, str]:
    """A raw exposure of each sample HST instrument, whose header every first rule row matches."""
    from crds_job.sample import datasets as sample_datasets

    folder = tmp_path / "data"
    folder.mkdir()
    return {instrument: sample_datasets.write_fits(str(folder / f"{instrument.lower()}_raw.fits"), header)
            for instrument, header in context.HST_DATASET_HEADERS.items()}


@pytest.fixture
def roman_bucket(s3: server.LocalS3, tmp_path) -> Bucket:
    """A fresh Roman bucket (two contexts) and an empty cache directory."""
    return new_bucket(s3, context.roman(), str(tmp_path / "cache"))


def largest_wfi_reference(bucket: Bucket) -> str:
    """The latest Roman sample context's largest WFI reference: the one whose damage tests break."""
    return max(bucket.sample.expected["roman_0051.pmap"]["wfi"].values(), key=bucket.sample.reference_sizes.get)


def cache_files(root: str) -> dict[str, int]:
    """Every file under ``root`` (relative path -> size), temp files included; not crds-job's own bookkeeping
    (journals: test_durability's; leases and records: test_retention's)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if folder == root:
            dirs[:] = [name for name in dirs if name not in (durability.FOLDER, retention.FOLDER)]
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.path.getsize(path)
    return found


def file_sha1(path: str) -> str:
    """The sha1 of the file at ``path``, computed here rather than by crds-job's own code."""
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.sha1(handle.read()).hexdigest()


def assert_cache_verified(root: str, sample: context.SampleBucket) -> None:
    """Every mapping/pickle/reference in the cache has exactly the bucket's bytes; no temp file is left."""
    meta = sample.metadata()
    for relative in cache_files(root):
        name = os.path.basename(relative)
        assert not name.startswith("."), f"a temporary file was left in the cache: {relative}"
        if relative.startswith(("mappings", "references")):
            digest = file_sha1(os.path.join(root, relative))
            assert digest == meta[name]["sha1sum"], f"{relative} holds unverified bytes"
        elif relative.startswith("pickles"):
            with open(os.path.join(root, relative), "rb") as handle:
                assert handle.read() == sample.pickles[name], f"{relative} holds another pickle's bytes"


#: Whether this machine lets a test bind-mount a cache read-only in a private namespace.
READ_ONLY_MOUNTS = subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


def _tmpfs_mounts() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _tmpfs_mounts(),
                                 reason="needs user+mount namespaces (unshare -rm) to mount a size-limited tmpfs")


def run_read_only(bucket, *args: str) -> Run:
    """crds-job on the bucket's cache bind-mounted read-only, in a private mount namespace."""
    cache = bucket.cache
    job = shlex.join([sys.executable, "-m", "crds_job", *args])
    script = f"mount --bind '{cache}' '{cache}' && mount -o remount,bind,ro '{cache}' && exec {job}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=bucket.env(), capture_output=True,
                          text=True, timeout=120)
    return Run(done.returncode, done.stdout, done.stderr, *parse_logs(done.stderr))


CANNOT_RESERVE = "the C library or the filesystem of the test's temp folder cannot reserve blocks (fallocate)"


def can_reserve(folder) -> bool:
    """Whether this C library and ``folder``'s filesystem can reserve blocks (fallocate)."""
    if cache_module._FALLOCATE is None:
        return False
    fd = os.open(os.path.join(folder, "probe"), os.O_RDWR | os.O_CREAT)
    try:
        return cache_module._FALLOCATE(fd, cache_module._KEEP_SIZE, 0, 4096) == 0
    finally:
        os.close(fd)
        os.unlink(os.path.join(folder, "probe"))


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    return {path: (os.stat(os.path.join(root, path)).st_mtime_ns, size) for path, size in cache_files(root).items()}


def publish_rmap(bucket, name: str, selector: str, extra_metadata: dict, instrument: str = "WFI",
                 line_end: str = "\n") -> None:
    """Replace rmap ``name`` with one of ``selector``, stamped and listed as a real one would be."""
    header = {"mapping": "REFERENCE", "observatory": "ROMAN", "instrument": instrument, "filekind": "GAIN",
              "name": name, "derived_from": "x", "parkey": (("ROMAN.META.INSTRUMENT.DETECTOR",),)}
    text = render_mapping(header, selector).replace("\n", line_end).encode()
    bucket.sample.mappings[name] = text
    bucket.put(f"mappings/roman/{name}", text)
    bucket.publish_metadata(extra_metadata)
