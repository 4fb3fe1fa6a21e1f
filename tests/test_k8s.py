"""The Kubernetes manifests: every overlay renders, validates, and agrees with the code.

No cluster runs here, so the contract is checked instead: kustomize renders
each overlay, the objects validate against the Kubernetes schema, and their
structure matches what crds-job does (where it writes, which variables it
reads, which exit codes are final, which user the image runs as).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from crds_job import environments, errors, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERLAYS = sorted(os.listdir(os.path.join(ROOT, "k8s/overlays")))
K8S_VERSION = "1.33.0"
CACHE_ENV = settings.OPTION_BY_NAME["cache"].crds_env  # CRDS_PATH
CRDS_JOB_IMAGES = ("crds-job", "calibration-with-crds-job")
ENTRYPOINT = "/opt/crds-job/entrypoint.py"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl (with kustomize) is not installed on this machine")


def render(overlay: str) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "k8s/overlays", overlay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def jobs(objects):
    return [o for o in objects if o["kind"] == "Job"]


def containers(job):
    spec = job["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_value(container, name):
    return next((e["value"] for e in container.get("env", []) if e["name"] == name), None)


def project_version() -> str:
    with open(os.path.join(ROOT, "pyproject.toml")) as handle:
        return re.search(r'^version = "([^"]+)"', handle.read(), re.M).group(1)


def dockerfile_uid() -> int:
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        return int(re.search(r"^ARG APP_UID=(\d+)", handle.read(), re.M).group(1))


def test_there_is_an_overlay_per_observatory_environment():
    expected = {f"{obs}-{env}" for obs, envs in environments.ENVIRONMENTS.items() for env in envs}
    assert expected <= set(OVERLAYS)


def test_objects_validate_against_the_kubernetes_schema(rendered):
    import kubernetes_validate

    _, objects = rendered
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_settings_name_a_real_observatory_environment(rendered):
    overlay, objects = rendered
    (config,) = [o for o in objects
                 if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("crds-job-settings")]
    data = config["data"]
    where = environments.locate(data["CRDS_JOB_OBSERVATORY"], data["CRDS_JOB_ENVIRONMENT"])
    assert overlay.startswith(f"{where.observatory}-{where.environment}")
    assert set(data) <= set(settings.env_names()), "only variables crds-job reads"
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(
        f"role/crds-job-{where.observatory}-{where.environment}")


def test_every_variable_set_is_one_the_code_reads(rendered):
    _, objects = rendered
    for job in jobs(objects):
        for container in containers(job):
            for entry in container.get("env", []):
                if entry["name"].startswith("CRDS"):
                    assert entry["name"] in settings.env_names(), entry["name"]


def test_crds_job_writes_where_the_cache_volume_is_mounted_writable(rendered):
    _, objects = rendered
    for job in jobs(objects):
        for container in containers(job):
            if container["image"].split(":")[0] not in CRDS_JOB_IMAGES:
                continue
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            cache = env_value(container, CACHE_ENV)
            assert cache in mounts and not mounts[cache].get("readOnly"), container["name"]
            assert mounts[cache]["name"] == "crds-cache"
            uses_env_twins = any(ref["configMapRef"]["name"].startswith("crds-job-settings")
                                 for ref in container.get("envFrom", []))
            assert uses_env_twins, "OBSERVATORY/ENVIRONMENT come from the settings ConfigMap"


def test_the_env_file_handoff_is_consistent(rendered):
    """What the warm writes with --env-file is read, at the same path, by the calibration."""
    _, objects = rendered
    written = {}
    for job in jobs(objects):
        for container in containers(job):
            args = container.get("args", [])
            if "--env-file" in args:
                path = args[args.index("--env-file") + 1]
                assert path.startswith(env_value(container, CACHE_ENV) + "/"), "inside the cache volume"
                written[path] = env_value(container, CACHE_ENV)
    for job in jobs(objects):
        for container in containers(job):
            script = " ".join(container.get("command", []))
            for path in re.findall(r"\. (\S+crds-job\.env)", script):
                assert path in written, f"{container['name']} sources {path}, which nothing writes"
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                assert written[path] in mounts, "the same mount path, so CRDS_PATH in the file holds"
                assert mounts[written[path]].get("readOnly"), "the calibration only reads the cache"


def test_images_and_commands_match_the_image(rendered):
    _, objects = rendered
    for job in jobs(objects):
        for container in containers(job):
            name, _, tag = container["image"].partition(":")
            if name == "crds-job":
                assert tag == project_version(), "the image tag is the package's version"
                assert "command" not in container, "the image's ENTRYPOINT runs crds-job"
            if name == "calibration-with-crds-job":
                script = " ".join(container.get("command", []))
                assert "command" not in container or ENTRYPOINT in script


def test_production_defaults(rendered):
    _, objects = rendered
    for job in jobs(objects):
        spec = job["spec"]
        assert "backoffLimit" in spec or "backoffLimitPerIndex" in spec
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
        for container in containers(job):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"]["memory"]
        for rule in spec.get("podFailurePolicy", {}).get("rules", []):
            assert sorted(rule["onExitCodes"]["values"]) == sorted(int(c) for c in errors.FINAL)
            names = {c["name"] for c in containers(job)}
            assert rule["onExitCodes"]["containerName"] in names


def test_indexed_jobs_have_one_completion_per_exposure():
    objects = render("roman-ops-exposures-indexed")
    (job,) = jobs(objects)
    (exposures,) = [o for o in objects if o["kind"] == "ConfigMap" and "exposures" in o["metadata"]["name"]]
    lines = exposures["data"]["exposures.txt"].strip().splitlines()
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == len(lines)


def test_the_shared_cache_is_written_once_and_read_only_elsewhere():
    objects = render("roman-ops-shared-cache")
    (claim,) = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    by_name = {job["metadata"]["name"]: job for job in jobs(objects)}
    calibrate = by_name["crds-calibrate-shared-cache"]["spec"]["template"]["spec"]
    (volume,) = [v for v in calibrate["volumes"] if v["name"] == "crds-cache"]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    warm = by_name["crds-warm-shared-cache"]["spec"]["template"]["spec"]
    (volume,) = [v for v in warm["volumes"] if v["name"] == "crds-cache"]
    assert not volume["persistentVolumeClaim"].get("readOnly")
