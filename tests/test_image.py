"""The image, built by a real container engine and run against a local S3 on loopback.

``tests/engine.py`` finds the engine (docker or podman; podman installed from
the distribution's packages where neither runs) and the Dockerfile's base (a
debootstrap stand-in where no registry is reachable). Four images are built
once for the module: the standalone image (the default target), the minimal
one (``EXTRAS=``), a stand-in calibration image (``tests/images``: a venv with
``crds[aws]`` at versions that are not the lock's, a user and a workdir of its
own) and crds-job layered on it (``--target layered``). Containers share the
host's network to reach the test's S3; the one that must need no network gets
none.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import Bucket, Run, assert_cache_verified, new_bucket, parse_logs
from engine import Engine, Unavailable, dockerfile_base, ensure_base, find

from crds_job.errors import ExitCode
from crds_job.sample import context
from crds_job.sample import datasets as sample_datasets
from crds_job.sample.throttle import ThrottlingProxy

#: The first test also builds the images: minutes on a machine that has to make the base.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_UID = 10001
CALIBRATION_UID = 2000  # tests/images/calibration.Dockerfile's user
#: The versions tests/images/calibration.Dockerfile installs: not the lock's.
CALIBRATION_CRDS, CALIBRATION_BOTOCORE = "14.0.2", "1.44.18"
TEMP_SUFFIX = ".crds-job.part"
NOT_ROOT = "the test chowns a host folder to the image's user, which needs root"


@dataclass(frozen=True)
class Images:
    engine: Engine
    base: str
    how: str  # how the base came here: present, pulled, or a debootstrap stand-in
    standalone: str = "crds-job-test/standalone"
    minimal: str = "crds-job-test/minimal"
    calibration: str = "crds-job-test/calibration"
    layered: str = "crds-job-test/layered"


@pytest.fixture(scope="module")
def images() -> Images:
    try:
        engine = find()
        base = dockerfile_base()
        how = ensure_base(engine, base)
    except Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI builds and runs the image, but: {exc}")
        pytest.skip(f"the image cannot be built here: {exc}")
    built = Images(engine, base, how)
    engine.build(built.standalone)
    engine.build(built.minimal, args={"EXTRAS": ""})
    engine.build(built.calibration, dockerfile=os.path.join(ROOT, "tests/images/calibration.Dockerfile"),
                 context=os.path.join(ROOT, "tests/images"), args={"BASE_IMAGE": base})
    engine.build(built.layered, target="layered", args={"BASE_IMAGE": built.calibration})
    return built


@pytest.fixture
def bucket(s3, tmp_path) -> Bucket:
    return new_bucket(s3, context.roman(), str(tmp_path / "cache"))


@pytest.fixture
def volume(images) -> Iterator[str]:
    name = f"crds-job-test-{uuid.uuid4().hex[:12]}"
    yield name
    images.engine.remove_volume(name)


def s3_env(bucket: Bucket, endpoint: str | None = None) -> dict[str, str]:
    """What a job needs to read ``bucket``, for a container: the image sets CRDS_PATH itself."""
    env = {name: value for name, value in bucket.env().items()
           if name.startswith("AWS_") or name in ("CRDS_S3_BUCKET", "CRDS_S3_PREFIX")}
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    return env


def run(images: Images, image: str, *args: str, bucket: Bucket | None = None, options=(), network: str = "host",
        env: dict[str, str] | None = None) -> Run:
    done = images.engine.run(image, *args, options=options, network=network,
                             env={**(s3_env(bucket) if bucket else {}), **(env or {})})
    return Run(done.returncode, done.stdout, done.stderr, *parse_logs(done.stderr))


def host_folder(path, owner: int | None) -> str:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o755)
    if owner is not None:
        os.chown(path, owner, owner)
    return str(path)


def exposure(tmp_path) -> str:
    """A host folder /data with one WFI exposure, readable by any user."""
    data = host_folder(tmp_path / "data", None)
    path = sample_datasets.write_asdf(os.path.join(data, "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    os.chmod(path, 0o644)
    return data


def getreferences_script(header: dict) -> str:
    """Python for the calibration's own crds: the WFI exposure's references from the cache, offline."""
    return ("import crds, json, os; refs = crds.getreferences(json.loads(os.environ['HEADER']), observatory='roman'); "
            "print(json.dumps({k: os.path.relpath(v, os.environ['CRDS_PATH']) for k, v in refs.items()}))")


def expected_references(bucket: Bucket) -> dict[str, str]:
    return {reftype: f"references/roman/{name}"
            for reftype, name in bucket.sample.expected[bucket.sample.contexts[-1]]["wfi"].items()}


# ----- the standalone image --------------------------------------------------------------------


def test_warms_a_volume_then_calibrates_from_it_read_only_with_no_network(images, bucket, volume):
    warmed = run(images, images.standalone, "roman", "ops", bucket=bucket, options=["-v", f"{volume}:/crds-cache"])
    assert warmed.returncode == 0, warmed.stderr
    plan = warmed.event("plan")
    assert plan["references"] == len(bucket.sample.references_of[bucket.sample.contexts[-1]])
    assert warmed.event("warmed")["files_fetched"] == plan["mappings"] + plan["references"]
    header = json.dumps(context.ROMAN_DATASET_HEADER)
    calibrated = run(images, images.standalone, "roman", "ops", "--", "/opt/crds-job/bin/python", "-c",
                     getreferences_script(context.ROMAN_DATASET_HEADER), network="none",
                     options=["-v", f"{volume}:/crds-cache:ro"], env={"HEADER": header}, bucket=bucket)
    assert calibrated.returncode == 0, calibrated.stderr
    assert json.loads(calibrated.stdout) == expected_references(bucket)
    assert calibrated.event("exec")["offline"] is True


def test_the_command_runs_as_the_image_user_under_tini_with_the_offline_environment(images, bucket, volume):
    script = 'id -u; pwd; tr "\\0" " " < /proc/1/cmdline; echo; env'
    done = run(images, images.standalone, "roman", "ops", "--", "sh", "-c", script, bucket=bucket,
               options=["-v", f"{volume}:/crds-cache"])
    assert done.returncode == 0, done.stderr
    uid, workdir, init, *env_lines = done.stdout.splitlines()
    assert (int(uid), workdir) == (APP_UID, "/home/crds")
    assert init.split()[:3] == ["/opt/crds-job/bin/tini", "--", "/opt/crds-job/entrypoint.py"], "tini is PID 1"
    env = dict(line.split("=", 1) for line in env_lines if "=" in line)
    assert env["CRDS_PATH"] == "/crds-cache" and env["CRDS_READONLY_CACHE"] == "1"
    assert env["CRDS_CONTEXT"] == bucket.sample.contexts[-1] and "serverless" in env["CRDS_SERVER_URL"]
    assert not any(name.startswith("CRDS_S3") for name in env), "the command runs offline: no S3 for crds"


def test_selective_warm_of_one_exposure_on_a_mounted_data_folder(images, bucket, volume, tmp_path):
    data = exposure(tmp_path)
    done = run(images, images.standalone, "roman", "ops", "--", "true", "/data/l1_img.asdf", bucket=bucket,
               options=["-v", f"{volume}:/crds-cache", "-v", f"{data}:/data:ro"],
               env={"CRDS_JOB_DATASETS": "/data/l1_img.asdf"})
    assert done.returncode == 0, done.stderr
    chosen = done.event("best references")
    assert chosen["references"] == bucket.sample.expected[bucket.sample.contexts[-1]]["wfi"]
    assert chosen["crds"] == "14.0.3", "the standalone image's own crds, from the lock"
    plan = done.event("plan")
    assert plan["references"] == len(chosen["references"]) < len(bucket.sample.reference_sizes)


def test_sigterm_mid_warm_exits_143_leaves_no_temp_file_and_a_resume_fetches_the_rest(images, bucket, tmp_path):
    cache = host_folder(tmp_path / "cache", APP_UID) if os.geteuid() == 0 else pytest.skip(NOT_ROOT)
    name = f"crds-job-test-{uuid.uuid4().hex[:12]}"
    with ThrottlingProxy(bucket.s3.endpoint, bandwidth=200_000) as slow:
        command = images.engine.run_command(images.standalone, "roman", "ops", "--concurrency", "4",
                                            env=s3_env(bucket, slow.endpoint),
                                            options=["--name", name, "-v", f"{cache}:/crds-cache"])
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not _references(cache) and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert job.poll() is None and _references(cache), "the throttled warm should still be running"
            subprocess.run([images.engine.name, "kill", "--signal", "TERM", name], check=True, capture_output=True)
            _, stderr = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
            subprocess.run([images.engine.name, "rm", "-f", name], capture_output=True)  # the client's death is not its
    assert job.returncode == 128 + 15, stderr
    kept = [path for path, _, files in os.walk(cache) for file in files if file.endswith(TEMP_SUFFIX)]
    assert not kept, f"temporary files left after SIGTERM: {kept}"
    done_before = len(_references(cache))
    assert 0 < done_before
    resumed = run(images, images.standalone, "roman", "ops", bucket=bucket, options=["-v", f"{cache}:/crds-cache"])
    assert resumed.returncode == 0, resumed.stderr
    warmed, plan = resumed.event("warmed"), resumed.event("plan")
    total = plan["mappings"] + plan["references"]
    assert warmed["files_present"] >= done_before and warmed["files_fetched"] + warmed["files_present"] == total
    assert warmed["files_fetched"] < total, "a resume fetches only what the first run did not finish"
    assert_cache_verified(cache, bucket.sample)


def _references(cache: str) -> list[str]:
    folder = os.path.join(cache, "references", "roman")
    return [name for name in os.listdir(folder) if not name.startswith(".")] if os.path.isdir(folder) else []


def test_dry_run_prints_the_plan_and_its_bytes_and_writes_nothing(images, bucket, volume):
    done = run(images, images.standalone, "roman", "ops", "--dry-run", "--", "false", bucket=bucket,
               options=["-v", f"{volume}:/crds-cache"])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["totals"]["bytes"] == sum(f["size"] for f in report["files"]) > 0
    assert not done.events("exec")
    listed = images.engine.run(images.standalone, "-A", "/crds-cache", options=["-v", f"{volume}:/crds-cache",
                                                                              "--entrypoint", "ls"])
    assert listed.returncode == 0 and listed.stdout.strip() == "", "the dry run wrote nothing into the cache"


def test_a_root_owned_bind_mount_says_who_cannot_write_it(images, bucket, tmp_path):
    cache = host_folder(tmp_path / "root-owned", None)
    if os.stat(cache).st_uid == APP_UID:
        pytest.skip("this test's own user is the image's")
    done = run(images, images.standalone, "roman", "ops", bucket=bucket, options=["-v", f"{cache}:/crds-cache"])
    assert done.returncode == ExitCode.CACHE, done.stderr
    (error,) = done.errors
    assert f"not writable by uid {APP_UID}" in error["event"] and "chown" in error["event"]
    assert "read-only" not in error["event"]
    assert os.listdir(cache) == []


@pytest.mark.skipif(os.geteuid() != 0, reason=NOT_ROOT)
def test_a_bind_mount_given_to_the_image_user_works_as_the_readme_shows(images, bucket, tmp_path):
    cache = host_folder(tmp_path / "cache", APP_UID)  # mkdir cache && sudo chown 10001 cache
    done = run(images, images.standalone, "roman", "ops", bucket=bucket, options=["-v", f"{cache}:/crds-cache"])
    assert done.returncode == 0, done.stderr
    assert_cache_verified(cache, bucket.sample)


# ----- the minimal image -----------------------------------------------------------------------


def test_minimal_image_has_no_crds_yet_warms_a_whole_context(images, bucket, volume):
    probe = images.engine.run(images.minimal, "-c", "import importlib.util as u; print(u.find_spec('crds'), "
                              "u.find_spec('numpy'), u.find_spec('astropy'))",
                              options=["--entrypoint", "/opt/crds-job/bin/python"])
    assert probe.returncode == 0 and probe.stdout.split() == ["None", "None", "None"], probe.stdout + probe.stderr
    done = run(images, images.minimal, "roman", "ops", bucket=bucket, options=["-v", f"{volume}:/crds-cache"])
    assert done.returncode == 0, done.stderr
    assert images.engine.size(images.minimal) < images.engine.size(images.standalone)


# ----- layered on a calibration image ----------------------------------------------------------


def _in(images: Images, image: str, *command: str) -> str:
    done = images.engine.run(image, *command[1:], options=["--entrypoint", command[0]])
    assert done.returncode == 0, f"{shlex.join(command)} in {image}: {done.stdout}{done.stderr}"
    return done.stdout


def test_layered_build_leaves_the_calibration_packages_user_workdir_and_path_as_they_were(images):
    before = _in(images, images.calibration, "python3", "-m", "pip", "freeze")
    after = _in(images, images.layered, "python3", "-m", "pip", "freeze")
    assert f"botocore=={CALIBRATION_BOTOCORE}" in before and f"crds=={CALIBRATION_CRDS}" in before
    assert after == before, "the layered build changed the calibration's packages"
    _in(images, images.layered, "python3", "-m", "pip", "check")
    base, layered = (images.engine.inspect(name)["Config"] for name in (images.calibration, images.layered))
    assert (layered["User"], layered["WorkingDir"]) == (base["User"], base["WorkingDir"]) == ("calibrator", "/work")
    assert layered.get("Labels") == base.get("Labels"), "the calibration image's labels are its own"
    stat = ("stat", "-c", "%U %a", "/opt")
    assert _in(images, images.layered, *stat) == _in(images, images.calibration, *stat) == "calibrator 775\n"
    added = set(layered["Env"]) - set(base["Env"])
    assert added == {"CRDS_PATH=/crds-cache"}, "the only variable the layer adds is where the cache is"


def test_layered_image_warms_as_the_calibration_user_with_its_crds_then_runs_its_python(images, bucket, volume,
                                                                                         tmp_path):
    data = exposure(tmp_path)
    check = ("import botocore, crds, json, os; print(json.dumps([botocore.__version__, crds.__version__, "
             "os.getuid(), os.getcwd()]))")
    done = run(images, images.layered, "roman", "ops", "--datasets", "/data/l1_img.asdf", "--", "python3", "-c", check,
               bucket=bucket, options=["-v", f"{volume}:/crds-cache", "-v", f"{data}:/data:ro"])
    assert done.returncode == 0, done.stderr
    chosen = done.event("best references")
    assert chosen["crds"] == CALIBRATION_CRDS, "the calibration's crds chose, as it will at calibration time"
    assert chosen["references"] == bucket.sample.expected[bucket.sample.contexts[-1]]["wfi"]
    assert json.loads(done.stdout) == [CALIBRATION_BOTOCORE, CALIBRATION_CRDS, CALIBRATION_UID, "/work"]
    header = json.dumps(context.ROMAN_DATASET_HEADER)
    offline = run(images, images.layered, "roman", "ops", "--datasets", "/data/l1_img.asdf", "--", "python3", "-c",
                  getreferences_script(context.ROMAN_DATASET_HEADER), network="none", bucket=bucket,
                  options=["-v", f"{volume}:/crds-cache:ro", "-v", f"{data}:/data:ro"], env={"HEADER": header})
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == expected_references(bucket)
