"""A container engine for the image's tests (``tests/test_image.py``): docker or podman, whichever runs.

Where neither runs and this is a root shell with apt (Debian, Ubuntu: CI's
machine), podman, runc and debootstrap are installed from the distribution's
packages. Where the Dockerfile's base image is neither present nor pullable (no
registry reachable), a stand-in is made with debootstrap and imported under the
base's name: Debian bookworm with its own python3 (3.11), pip and venv under
/usr/bin, where the real ``python:3.11.*-slim-bookworm`` has python.org's build
under /usr/local. The Dockerfile relies on neither; the sizes measured on the
stand-in are said to be the stand-in's.

Everything this kind of machine needs and a real one does not stays here, never
in the Dockerfile: the host's CA bundle mounted into builds (for a network whose
TLS is intercepted), podman's ``--isolation=chroot --format docker`` (the
Dockerfile's SHELL is a Docker-format field) and, to run, ``--runtime runc`` with
explicit ulimits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_MIRROR = os.environ.get("CRDS_JOB_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: The host's CA bundle, if the host trusts one (an intercepting proxy's CA is in it).
HOST_CA_BUNDLE = next((path for path in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt")
                       if path and os.path.isfile(path)), None)


class Unavailable(Exception):
    """No container engine runs here and none can be installed: the reason, for a skip."""


def _run(command: Sequence[str], timeout: float = 900, **options) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **options)


def _works(*command: str) -> bool:
    try:
        return _run(command, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Engine:
    """The ``docker`` or ``podman`` command, with the options this machine needs."""

    name: str

    @property
    def podman(self) -> bool:
        return self.name == "podman"

    def build(self, tag: str, *, target: str | None = None, dockerfile: str | None = None,
              args: Mapping[str, str] = {}, context: str = ROOT) -> str:
        """Build ``tag``; its log. A failed build raises with the log's end."""
        command = [self.name, "build", "-t", tag, "--network=host"]
        if self.podman:
            command += ["--isolation=chroot", "--format", "docker"]
            if HOST_CA_BUNDLE:  # both apt's and pip's TLS trust the host's CAs
                command += ["-v", f"{HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro",
                            "-v", f"{_pip_conf()}:/etc/pip.conf:ro"]
        command += [arg for name, value in args.items() for arg in ("--build-arg", f"{name}={value}")]
        command += (["--target", target] if target else []) + (["-f", dockerfile] if dockerfile else []) + [context]
        done = _run(command, timeout=1800)
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-6000:]
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{output}")
        return done.stdout + done.stderr

    def run_options(self) -> list[str]:
        if not self.podman:
            return []
        runtime = ["--runtime", "runc"] if shutil.which("runc") else []
        return [*runtime, "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]

    def run(self, image: str, *args: str, options: Sequence[str] = (), env: Mapping[str, str] = {},
            network: str = "host", timeout: float = 300) -> subprocess.CompletedProcess:
        """``run --rm`` of ``image`` with ``args`` (crds-job's argv, after its ENTRYPOINT)."""
        return _run(self.run_command(image, *args, options=options, env=env, network=network), timeout=timeout)

    def run_command(self, image: str, *args: str, options: Sequence[str] = (), env: Mapping[str, str] = {},
                    network: str = "host", remove: bool = True) -> list[str]:
        command = [self.name, "run", *(["--rm"] if remove else []), f"--network={network}", *self.run_options()]
        command += [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
        return [*command, *options, image, *args]

    def inspect(self, image: str) -> dict:
        done = _run([self.name, "image", "inspect", image])
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)[0]

    def size(self, image: str) -> int:
        return int(self.inspect(image)["Size"])

    def exists(self, image: str) -> bool:
        return _works(self.name, "image", "inspect", image)

    def remove_volume(self, name: str) -> None:
        _run([self.name, "volume", "rm", "-f", name])


def _pip_conf() -> str:
    """A pip.conf that makes pip trust the CA bundle mounted beside it (pip has its own otherwise)."""
    path = os.path.join(tempfile.gettempdir(), "crds-job-image-test-pip.conf")
    with open(path, "w") as handle:
        handle.write("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    return path


def find() -> Engine:
    """A running engine; podman installed first where there is none and that can be done."""
    if shutil.which("docker") and _works("docker", "info"):
        return Engine("docker")
    if shutil.which("podman") and _works("podman", "info"):
        return Engine("podman")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("no container engine runs here (docker or podman), and installing podman needs root "
                          "and apt-get")
    _apt_install("podman", "runc", "debootstrap")
    if not _works("podman", "info"):
        raise Unavailable("podman was installed from the distribution's packages but does not run here")
    return Engine("podman")


def _apt_install(*packages: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if _run(install, env=env).returncode != 0:  # a clean machine has no package lists yet
        _run(["apt-get", "update", "-q"], env=env)
        done = _run(install, env=env)
        if done.returncode != 0:
            raise Unavailable(f"apt-get could not install {', '.join(packages)}: {done.stderr.strip()[-300:]}")


def dockerfile_base() -> str:
    """The Dockerfile's default BASE_IMAGE."""
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        return re.search(r"^ARG BASE_IMAGE=(\S+)$", handle.read(), re.M).group(1)


def ensure_base(engine: Engine, image: str) -> str:
    """``image`` present in the engine: already there, pulled, or a debootstrap stand-in. Says which."""
    if engine.exists(image):
        return "present"
    try:
        if _run([engine.name, "pull", image], timeout=120).returncode == 0:
            return "pulled"
    except subprocess.TimeoutExpired:
        pass
    if not shutil.which("debootstrap"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise Unavailable(f"{image} cannot be pulled here and debootstrap, to make a stand-in, is not installed")
        _apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="crds-job-base-") as scratch:
        rootfs = os.path.join(scratch, "rootfs")
        done = _run(["debootstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates",
                     "bookworm", rootfs, DEBIAN_MIRROR], timeout=1200)
        if done.returncode != 0:
            raise Unavailable(f"debootstrap failed making a stand-in for {image}: {done.stderr.strip()[-300:]}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [engine.name, "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", _full_name(image)],
            stdin=tar.stdout, capture_output=True, text=True, timeout=600)
        tar.stdout.close()
        tar.wait()
        assert imported.returncode == 0, imported.stderr
    return "stand-in"


def _full_name(image: str) -> str:
    """Docker Hub's full name of a short one (``python:3.11`` is ``docker.io/library/python:3.11``)."""
    name = image.split("/")
    if len(name) == 1:
        return f"docker.io/library/{image}"
    return image if "." in name[0] or ":" in name[0] else f"docker.io/{image}"
