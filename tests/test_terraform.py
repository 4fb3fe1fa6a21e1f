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
@pytest.mark.parametrize("folder", ["", "examples/roman-ops"])
def test_terraform_validate(tmp_path, folder):
    copy = tmp_path / "terraform"
    shutil.copytree(MODULE, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    where = str(copy / folder)
    assert terraform("init", "-backend=false", f"-plugin-dir={PLUGINS}", "-input=false", cwd=where).returncode == 0
    done = terraform("validate", "-json", cwd=where)
    assert json.loads(done.stdout)["valid"], done.stdout


def plan(tmp_path, **module_args) -> dict:
    """Plan the module offline with ``module_args``; return terraform's JSON plan."""
    copy = tmp_path / "module"
    shutil.copytree(MODULE, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "examples"))
    root = tmp_path / "root"
    root.mkdir()
    arguments = "\n".join(f"  {key} = {json.dumps(value)}" for key, value in module_args.items())
    (root / "main.tf").write_text(OFFLINE_PROVIDER + f'module "crds_job" {{\n  source = "../module"\n{arguments}\n}}\n'
                                  'output "environment" { value = module.crds_job.environment }\n'
                                  'output "command" { value = module.crds_job.command }\n'
                                  'output "volumes" { value = module.crds_job.volumes }\n')
    assert terraform("init", "-backend=false", f"-plugin-dir={PLUGINS}", "-input=false", cwd=str(root)).returncode == 0
    done = terraform("plan", "-input=false", "-refresh=false", "-out=plan.bin", cwd=str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(terraform("show", "-json", "plan.bin", cwd=str(root)).stdout)


def resources(planned: dict) -> dict[str, dict]:
    module = planned["planned_values"]["root_module"]["child_modules"][0]
    return {r["address"].removeprefix("module.crds_job."): r["values"] for r in module["resources"]}


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
    planned = plan(tmp_path, observatory="roman", environment="ops", image="crds-job:0.1.0", data_efs=efs)
    found = resources(planned)
    container = planned["planned_values"]["outputs"]["volumes"]["value"]
    with open(os.path.join(MODULE, "main.tf")) as handle:  # the job definition's own, known only once applied
        assert re.search(r"volumes += local.data_volumes\n +mountPoints += local.data_mount_points", handle.read())
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
