"""The AWS Batch module: formatted, valid, planned offline, and in agreement with the code.

No AWS account is used: ``terraform plan`` runs against the AWS provider
from a local mirror with fake credentials and every account lookup skipped,
which is enough to plan IAM policies and a job definition. Where the mirror
or terraform is missing the test says so and skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import hcl2
import pytest

from crds_job import cache, environments, errors, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "terraform")
PLUGINS = os.environ.get("CRDS_JOB_TF_PLUGIN_DIR", "/opt/tf-plugins")

needs_terraform = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed here")
needs_provider = pytest.mark.skipif(
    shutil.which("terraform") is None or not os.path.isdir(PLUGINS),
    reason=f"terraform's AWS provider is not mirrored in {PLUGINS} and no registry is reachable",
)

OFFLINE_PROVIDER = """
provider "aws" {
  region                      = "us-east-1"
  access_key                  = "offline"
  secret_key                  = "offline"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}
"""


def terraform(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=os.devnull)
    return subprocess.run(["terraform", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def load(name: str) -> dict:
    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False)
    with open(os.path.join(MODULE, name)) as handle:
        return hcl2.load(handle, serialization_options=options)


def main_locals() -> dict:
    merged: dict = {}
    for block in load("main.tf")["locals"]:
        merged.update(block)
    return merged


@needs_terraform
def test_terraform_fmt():
    done = terraform("fmt", "-check", "-recursive", "-diff", ".", cwd=MODULE)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_provider
@pytest.mark.parametrize("folder", ["", "examples/roman-ops", "examples/roman-ops-shared-cache"])
def test_terraform_validate(tmp_path, folder):
    copy = tmp_path / "terraform"
    shutil.copytree(MODULE, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    where = str(copy / folder)
    assert terraform("init", "-backend=false", f"-plugin-dir={PLUGINS}", "-input=false", cwd=where).returncode == 0
    done = terraform("validate", "-json", cwd=where)
    assert json.loads(done.stdout)["valid"], done.stdout


#: The roles the job definition names (its key, the module's role, an ARN), known at plan in a ``rendered`` plan.
KNOWN_ROLES = (("jobRoleArn", "job", "arn:aws:iam::111122223333:role/crds-job-job"),
               ("executionRoleArn", "execution", "arn:aws:iam::111122223333:role/crds-job-execution"))


def plan(tmp_path, *, rendered: bool = False, **module_args) -> dict:
    """Plan the module offline with ``module_args``; return terraform's JSON plan.

    ``rendered``: the copy planned names the job definition's roles by known ARNs, not by the
    roles' own (known only once applied), so that its ``container_properties`` is rendered at plan
    and checked by the AWS provider, as it will be at apply.
    """
    copy = tmp_path / "module"
    shutil.copytree(MODULE, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "examples"))
    if rendered:
        text = (copy / "main.tf").read_text()
        for key, role, arn in KNOWN_ROLES:
            text, count = re.subn(rf"\b{key}( += )aws_iam_role\.{role}\.arn\b", rf'{key}\1"{arn}"', text)
            assert count == 1, f"the job definition's {key} is aws_iam_role.{role}.arn"
        (copy / "main.tf").write_text(text)
    root = tmp_path / "root"
    root.mkdir()
    arguments = "\n".join(f"  {key} = {json.dumps(value)}" for key, value in module_args.items())
    (root / "main.tf").write_text(OFFLINE_PROVIDER + f'module "crds_job" {{\n  source = "../module"\n{arguments}\n}}\n'
                                  'output "environment" { value = module.crds_job.environment }\n'
                                  'output "command" { value = module.crds_job.command }\n'
                                  'output "volumes" { value = module.crds_job.volumes }\n'
                                  'output "ephemeral_storage_gib" { value = module.crds_job.ephemeral_storage_gib }\n')
    assert terraform("init", "-backend=false", f"-plugin-dir={PLUGINS}", "-input=false", cwd=str(root)).returncode == 0
    done = terraform("plan", "-input=false", "-refresh=false", "-out=plan.bin", cwd=str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(terraform("show", "-json", "plan.bin", cwd=str(root)).stdout)


def resources(planned: dict) -> dict[str, dict]:
    module = planned["planned_values"]["root_module"]["child_modules"][0]
    return {r["address"].removeprefix("module.crds_job."): r["values"] for r in module["resources"]}


def rendered_container(planned: dict) -> dict:
    """The job definition's container properties, from a ``rendered`` plan."""
    return json.loads(resources(planned)["aws_batch_job_definition.this"]["container_properties"])


#: The job role's S3 policy: one where there is a bucket to read (count), none for JWST.
READ_POLICY = "aws_iam_role_policy.read_crds_cache[0]"


@needs_provider
@pytest.mark.parametrize("observatory, environment", [("roman", "ops"), ("roman", "int"), ("hst", "test")])
def test_the_job_role_reads_exactly_its_cache(tmp_path, observatory, environment):
    planned = plan(tmp_path, observatory=observatory, environment=environment, image="crds-job:0.1.0")
    policy = json.loads(resources(planned)[READ_POLICY]["policy"])
    where = environments.locate(observatory, environment)
    folders = sorted(where.key(area) for area in cache.AREAS)
    assert where.key("pickles") in folders, "HST's buckets hold pickles, not mappings"
    get, listing = policy["Statement"]
    assert get["Action"] == "s3:GetObject"
    assert sorted(get["Resource"]) == sorted(f"arn:aws:s3:::{where.bucket}/{folder}/*" for folder in folders)
    assert listing["Action"] == "s3:ListBucket" and listing["Resource"] == f"arn:aws:s3:::{where.bucket}"
    assert sorted(listing["Condition"]["StringLike"]["s3:prefix"]) == [f"{folder}/*" for folder in folders]
    outputs = planned["planned_values"]["outputs"]
    assert outputs["command"]["value"] == [observatory, environment]
    environment_values = outputs["environment"]["value"]
    assert environment_values["CRDS_JOB_OBSERVATORY"] == observatory
    assert set(environment_values) <= set(settings.env_names())
    assert "CRDS_JOB_SOURCE" not in environment_values, "auto, as before the CRDS server was a source"


@needs_provider
@pytest.mark.parametrize("environment", environments.ENVIRONMENTS["jwst"])
def test_a_server_only_observatory_gets_no_s3_access_and_reads_its_server(tmp_path, environment):
    """JWST has no bucket: the job reads its public CRDS server, and its role may read no S3 at all."""
    assert "jwst" not in environments.WITH_S3
    planned = plan(tmp_path, observatory="jwst", environment=environment, image="crds-job:0.1.0")
    found = resources(planned)
    assert READ_POLICY not in found and not any("read_crds_cache" in address for address in found)
    assert "aws_iam_role.job" in found and "aws_batch_job_definition.this" in found
    outputs = planned["planned_values"]["outputs"]
    assert outputs["command"]["value"] == ["jwst", environment]
    environment_values = outputs["environment"]["value"]
    assert set(environment_values) <= set(settings.env_names())
    # What crds-job makes of that environment: no bucket, STScI's server for jwst/<environment>.
    parsed = settings.parse([], environment_values)
    assert parsed.source == "server" and not parsed.location.bucket
    assert parsed.server_url == environments.server_url("jwst", environment)
    # Another server (a mirror, a proxy) is passed as the job's setting.
    planned = plan(tmp_path / "mirror", observatory="jwst", environment=environment, image="crds-job:0.1.0",
                   server="https://crds.example.org/jwst/")
    parsed = settings.parse([], planned["planned_values"]["outputs"]["environment"]["value"])
    assert parsed.server_url == "https://crds.example.org/jwst"


@needs_provider
@pytest.mark.parametrize("prefix", ["", "/mirror/crds/", "mirror"])
def test_a_private_mirrors_role_reads_exactly_what_the_job_reads(tmp_path, prefix):
    """The job reads the keys its settings resolve from the module's environment, and only those are granted."""
    planned = plan(tmp_path, observatory="roman", environment="ops", image="crds-job:0.1.0",
                   bucket="my-mirror", prefix=prefix)
    environment_values = planned["planned_values"]["outputs"]["environment"]["value"]
    where = settings.parse([], environment_values).location
    assert (where.bucket, where.prefix) == ("my-mirror", "/" + prefix.strip("/") if prefix.strip("/") else "")
    policy = json.loads(resources(planned)[READ_POLICY]["policy"])
    get, _ = policy["Statement"]
    assert sorted(get["Resource"]) == sorted(f"arn:aws:s3:::my-mirror/{where.key(area)}/*"
                                             for area in cache.AREAS)


@needs_provider
def test_retries_are_crds_jobs_retryable_exit_codes_only(tmp_path):
    planned = plan(tmp_path, observatory="roman", environment="ops", image="crds-job:0.1.0",
                   command=["strun", "x.asdf"], context="roman_0055.pmap", platform="EC2")
    job = resources(planned)["aws_batch_job_definition.this"]
    rules = job["retry_strategy"][0]["evaluate_on_exit"]
    retried = [rule["on_exit_code"] for rule in rules if rule["action"].upper() == "RETRY" and rule["on_exit_code"]]
    assert retried == [str(int(code)) for code in errors.RETRYABLE]
    assert (rules[-1]["on_exit_code"], rules[-1]["action"].upper()) == ("*", "EXIT"), "everything else is final"
    assert not set(retried) & {str(int(code)) for code in errors.FINAL}
    assert job["platform_capabilities"] == ["EC2"] and job["timeout"][0]["attempt_duration_seconds"] > 0
    outputs = planned["planned_values"]["outputs"]
    assert outputs["command"]["value"] == ["roman", "ops", "--", "strun", "x.asdf"]
    assert outputs["environment"]["value"]["CRDS_JOB_CONTEXT"] == "roman_0055.pmap"


@needs_provider
@pytest.mark.parametrize("args, message", [
    ({"observatory": "euclid", "environment": "ops"}, "observatory must be roman, hst or jwst"),
    ({"observatory": "hst", "environment": "int"}, "environment must be one of"),
    ({"observatory": "jwst", "environment": "dev"}, "environment must be one of"),
    ({"observatory": "jwst", "environment": "ops", "server": "jwst-crds.stsci.edu"}, "server is an http"),
    ({"observatory": "roman", "environment": "ops", "settings": {"AWS_SECRET_ACCESS_KEY": "x"}}, "CRDS_JOB_"),
    # The shared cache is mounted through an access point (uid 10001, IAM) or not at all.
    ({"observatory": "roman", "environment": "ops", "cache_efs_file_system_id": "fs-0123456789abcdef0"},
     "go together"),
    ({"observatory": "roman", "environment": "ops", "cache_efs_access_point_id": "fsap-0123456789abcdef0"},
     "go together"),
    ({"observatory": "roman", "environment": "ops", "cache_efs_file_system_id": "fsap-0123456789abcdef0",
      "cache_efs_access_point_id": "fsap-0123456789abcdef0"}, "is an EFS file system ID"),
    ({"observatory": "roman", "environment": "ops", "cache_efs_file_system_id": "fs-0123456789abcdef0",
      "cache_efs_access_point_id": "fs-0123456789abcdef0"}, "is an EFS access point ID"),
])
def test_variables_refuse_what_crds_job_would_refuse(tmp_path, args, message):
    with pytest.raises(AssertionError, match=message):
        plan(tmp_path, image="crds-job:0.1.0", **args)


def test_the_bucket_table_is_the_codes():
    """Every observatory/environment crds-job knows, with STScI's bucket; "" where there is none (JWST)."""
    caches = main_locals()["caches"]
    assert set(caches) == set(environments.ENVIRONMENTS)
    for observatory, envs in environments.ENVIRONMENTS.items():
        assert set(caches[observatory]) == set(envs)
        assert all(caches[observatory][env]["bucket"] for env in envs) == (observatory in environments.WITH_S3)
        for environment in envs:
            where = environments.locate(observatory, environment)
            assert caches[observatory][environment] == {"bucket": where.bucket, "prefix": where.prefix.strip("/")}


def test_the_module_names_the_codes_exit_codes_env_names_and_cache_path():
    found = main_locals()
    assert found["retryable_exit_codes"] == [str(int(code)) for code in errors.RETRYABLE]
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        dockerfile = handle.read()
    with open(os.path.join(MODULE, "main.tf")) as handle:
        cache = re.search(r'CRDS_PATH\s*=\s*"([^"]+)"', handle.read()).group(1)
    assert f"CRDS_PATH={cache}" in dockerfile and f'VOLUME ["{cache}"]' in dockerfile, "the image's cache volume"
    with open(os.path.join(MODULE, "main.tf")) as handle:
        text = handle.read()
    for name in set(re.findall(r"\bCRDS_[A-Z_]+\b", text)):
        assert name in settings.env_names(), name


def test_module_layout_and_readme():
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert os.path.exists(os.path.join(MODULE, name)), name
    with open(os.path.join(MODULE, "README.md")) as handle:
        readme = handle.read()
    for variable in load("variables.tf")["variable"]:
        assert f"`{next(iter(variable))}`" in readme, f"input {next(iter(variable))} is documented"
    for output in load("outputs.tf")["output"]:
        assert f"`{next(iter(output))}`" in readme, f"output {next(iter(output))} is documented"


@needs_provider
@pytest.mark.parametrize("access_point", [None, "fsap-0123456789abcdef0"])
def test_the_exposures_volume_is_mounted_and_the_role_may_use_it(tmp_path, access_point):
    """Array children read /data/exposure-N: without a volume there, every one would fail."""
    efs = {"file_system_id": "fs-0123456789abcdef0", **({"access_point_id": access_point} if access_point else {})}
    planned = plan(tmp_path, rendered=True, observatory="roman", environment="ops", image="crds-job:0.1.0",
                   data_efs=efs)
    found = resources(planned)
    container = planned["planned_values"]["outputs"]["volumes"]["value"]
    job = rendered_container(planned)  # the job definition's own, as the provider accepted it
    assert container == {"volumes": job["volumes"], "mountPoints": job["mountPoints"]}
    (volume,) = container["volumes"]
    config = volume["efsVolumeConfiguration"]
    assert config["fileSystemId"] == efs["file_system_id"] and config["transitEncryption"] == "ENABLED"
    if access_point:
        assert config["authorizationConfig"] == {"accessPointId": access_point, "iam": "ENABLED"}
    else:
        assert config["rootDirectory"] == "/"
    (mount,) = container["mountPoints"]
    assert mount["sourceVolume"] == volume["name"] and mount["containerPath"] == "/data"
    assert mount["containerPath"] != planned["planned_values"]["outputs"]["environment"]["value"]["CRDS_PATH"]
    statement = json.loads(found["aws_iam_role_policy.use_data_efs[0]"]["policy"])["Statement"][0]
    assert statement["Resource"].endswith(f":file-system/{efs['file_system_id']}")
    assert sorted(statement["Action"]) == ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    planned = plan(tmp_path / "none", observatory="roman", environment="ops", image="crds-job:0.1.0")
    assert "aws_iam_role_policy.use_data_efs[0]" not in resources(planned)
    assert planned["planned_values"]["outputs"]["volumes"]["value"] == {"volumes": [], "mountPoints": []}


#: A shared cache: an EFS file system and the access point the job mounts it through.
CACHE_EFS = {"cache_efs_file_system_id": "fs-0aaaaaaaaaaaaaaaa", "cache_efs_access_point_id": "fsap-0bbbbbbbbbbbbbbbb"}
EFS_ACTIONS = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]


def role_policies(found: dict[str, dict]) -> dict[str, dict]:
    """The job role's inline policies, parsed, by address."""
    return {address: json.loads(values["policy"]) for address, values in found.items()
            if address.startswith("aws_iam_role_policy.")}


@needs_provider
@pytest.mark.parametrize("platform", ["FARGATE", "EC2"])
def test_the_shared_cache_is_mounted_where_crds_path_points_through_its_access_point(tmp_path, platform):
    """Every job of the definition warms and reads the one EFS cache: at CRDS_PATH, writable, over TLS, as uid 10001."""
    planned = plan(tmp_path, rendered=True, observatory="roman", environment="ops", image="crds-job:0.1.0",
                   platform=platform, **CACHE_EFS)
    job = rendered_container(planned)  # as the provider accepted it
    outputs = planned["planned_values"]["outputs"]
    assert outputs["volumes"]["value"] == {"volumes": job["volumes"], "mountPoints": job["mountPoints"]}
    (volume,) = job["volumes"]
    # An access point sets the root directory (Batch refuses another beside it) and the POSIX user.
    assert volume["efsVolumeConfiguration"] == {
        "fileSystemId": CACHE_EFS["cache_efs_file_system_id"],
        "transitEncryption": "ENABLED",
        "authorizationConfig": {"accessPointId": CACHE_EFS["cache_efs_access_point_id"], "iam": "ENABLED"},
    }
    (mount,) = job["mountPoints"]
    crds_path = {variable["name"]: variable["value"] for variable in job["environment"]}["CRDS_PATH"]
    assert mount == {"sourceVolume": volume["name"], "containerPath": crds_path, "readOnly": False}
    assert settings.parse([], outputs["environment"]["value"]).cache == crds_path, "where crds-job warms"
    # IAM authorization mounts with the job role: the role given the policy is the one the job runs as.
    assert job["jobRoleArn"] == KNOWN_ROLES[0][2]
    configured = planned["configuration"]["root_module"]["module_calls"]["crds_job"]["module"]["resources"]
    (policy_config,) = [r for r in configured if r["address"] == "aws_iam_role_policy.use_cache_efs"]
    assert "aws_iam_role.job" in policy_config["expressions"]["role"]["references"]
    if platform == "FARGATE":
        # Fargate mounts EFS from platform version 1.4.0 on (LATEST is that or later).
        version = job["fargatePlatformConfiguration"]["platformVersion"]
        assert version == "LATEST" or tuple(map(int, version.split("."))) >= (1, 4, 0), version
        # Ephemeral storage no longer holds the cache: Fargate's default 20 GiB, unless asked for.
        assert "ephemeralStorage" not in job and outputs["ephemeral_storage_gib"]["value"] is None
        asked = plan(tmp_path / "asked", rendered=True, observatory="roman", environment="ops",
                     image="crds-job:0.1.0", ephemeral_storage_gib=50, **CACHE_EFS)
        assert rendered_container(asked)["ephemeralStorage"] == {"sizeInGiB": 50}
        assert asked["planned_values"]["outputs"]["ephemeral_storage_gib"]["value"] == 50
    else:
        assert "ephemeralStorage" not in job and "fargatePlatformConfiguration" not in job


@needs_provider
def test_the_job_role_may_use_the_cache_file_system_only_through_its_access_point(tmp_path):
    planned = plan(tmp_path, observatory="roman", environment="ops", image="crds-job:0.1.0", **CACHE_EFS)
    policies = role_policies(resources(planned))
    (statement,) = policies.pop("aws_iam_role_policy.use_cache_efs[0]")["Statement"]
    assert statement["Effect"] == "Allow" and sorted(statement["Action"]) == EFS_ACTIONS, "no ClientRootAccess"
    efs = "arn:aws:elasticfilesystem:us-east-1:*"  # the account is not known offline, nor needed: IDs are unique
    assert statement["Resource"] == f"{efs}:file-system/{CACHE_EFS['cache_efs_file_system_id']}"
    assert statement["Condition"] == {
        "ArnLike": {"elasticfilesystem:AccessPointArn": f"{efs}:access-point/{CACHE_EFS['cache_efs_access_point_id']}"}
    }
    assert "elasticfilesystem" not in json.dumps(policies), "no other EFS permission"
    # With the exposures' file system too, each volume keeps its own mount and permission.
    planned = plan(tmp_path / "data", observatory="roman", environment="ops", image="crds-job:0.1.0",
                   data_efs={"file_system_id": "fs-0cccccccccccccccc"}, **CACHE_EFS)
    container = planned["planned_values"]["outputs"]["volumes"]["value"]
    mounts = {mount["sourceVolume"]: mount["containerPath"] for mount in container["mountPoints"]}
    assert sorted(mounts.values()) == ["/crds-cache", "/data"] and len(container["volumes"]) == len(mounts) == 2
    policies = role_policies(resources(planned))
    assert policies["aws_iam_role_policy.use_cache_efs[0]"]["Statement"] == [statement]
    assert policies["aws_iam_role_policy.use_data_efs[0]"]["Statement"][0]["Resource"].endswith("/fs-0cccccccccccccccc")


@needs_provider
@pytest.mark.parametrize("platform, storage", [("FARGATE", 200), ("EC2", None)])
def test_without_a_shared_cache_the_job_definition_is_as_before(tmp_path, platform, storage):
    """No cache_efs_*: the cache is the job's own, in 200 GiB of Fargate ephemeral storage; no EFS, no EFS IAM."""
    planned = plan(tmp_path, rendered=True, observatory="roman", environment="ops", image="crds-job:0.1.0",
                   platform=platform)
    found = resources(planned)
    assert set(found) == {
        "aws_batch_job_definition.this", "aws_cloudwatch_log_group.this", "aws_iam_role.execution",
        "aws_iam_role.job", "aws_iam_role_policy.read_crds_cache[0]", "aws_iam_role_policy_attachment.execution",
    }
    assert "elasticfilesystem" not in json.dumps(role_policies(found))
    job = rendered_container(planned)  # as the provider accepted it: a number of GiB, not a string
    assert (job["volumes"], job["mountPoints"]) == ([], [])
    assert job.get("ephemeralStorage") == (None if storage is None else {"sizeInGiB": storage})
    outputs = planned["planned_values"]["outputs"]
    assert outputs["volumes"]["value"] == {"volumes": [], "mountPoints": []}
    assert outputs["ephemeral_storage_gib"]["value"] == storage
    assert sorted(job) == sorted([
        "image", "command", "jobRoleArn", "executionRoleArn", "resourceRequirements", "environment", "volumes",
        "mountPoints", "logConfiguration",
        *(["ephemeralStorage", "networkConfiguration", "fargatePlatformConfiguration"] if storage else []),
    ])


def test_the_shared_cache_example_gives_the_cache_to_the_images_user():
    """The access point's POSIX user and root directory are the image's uid: the job writes as 10001."""
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        uid = int(re.search(r"^ARG APP_UID=(\d+)$", handle.read(), re.MULTILINE).group(1))
    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False)
    with open(os.path.join(MODULE, "examples", "roman-ops-shared-cache", "main.tf")) as handle:
        example = hcl2.load(handle, serialization_options=options)
    found = {(kind, name): body for block in example["resource"] for kind, named in block.items()
             for name, body in named.items()}
    ((_, access_point_name),) = [key for key in found if key[0] == "aws_efs_access_point"]
    access_point = found["aws_efs_access_point", access_point_name]
    (file_system,) = [name for kind, name in found if kind == "aws_efs_file_system"]
    (posix_user,) = access_point["posix_user"]
    assert (posix_user["uid"], posix_user["gid"]) == (uid, uid)
    (root,) = access_point["root_directory"]
    (creation,) = root["creation_info"]
    assert (creation["owner_uid"], creation["owner_gid"], creation["permissions"]) == (uid, uid, "0755")
    reference = f"${{aws_efs_file_system.{file_system}.id}}"
    assert access_point["file_system_id"] == reference
    assert any(kind == "aws_efs_mount_target" and body["file_system_id"] == reference
               for (kind, _), body in found.items()), "a mount target, or no job reaches it"
    (module,) = [block["crds_job"] for block in example["module"]]
    assert module["cache_efs_file_system_id"] == reference
    assert module["cache_efs_access_point_id"] == f"${{aws_efs_access_point.{access_point_name}.id}}"
