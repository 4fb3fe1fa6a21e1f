# Roman ops: a job definition that warms the exposure's CRDS cache and runs romancal on it.
#   terraform init && terraform apply
#   aws batch submit-job --job-name l1 --job-queue <queue> --job-definition crds-job-roman-ops \
#     --container-overrides 'command=["roman","ops","--","strun","romancal.pipeline.ExposurePipeline","/data/l1.asdf"]'
#   (/data: the EFS volume below)
# An array job runs one child per exposure; each child reads AWS_BATCH_JOB_ARRAY_INDEX, and
# CRDS_JOB_DATASETS names its exposure (crds-job expands the variable), so a missing one stops
# that child (exit 66) instead of warming the whole context:
#   aws batch submit-job ... --array-properties size=100 --container-overrides '{
#     "environment": [{"name": "CRDS_JOB_DATASETS", "value": "/data/exposure-${AWS_BATCH_JOB_ARRAY_INDEX}.asdf"}],
#     "command": ["roman", "ops", "--", "sh", "-c", "exec strun romancal.pipeline.ExposurePipeline /data/exposure-$AWS_BATCH_JOB_ARRAY_INDEX.asdf"]}'

provider "aws" {
  region = "us-east-1"
}

module "crds_job" {
  source = "../.."

  name        = "crds-job-roman-ops"
  observatory = "roman"
  environment = "ops"
  image       = "123456789012.dkr.ecr.us-east-1.amazonaws.com/romancal-crds-job:0.1.0"
  command     = ["strun", "romancal.pipeline.ExposurePipeline", "/data/l1.asdf"]
  settings    = { CRDS_JOB_CONCURRENCY = "64" }
  # The exposures, and the products: an EFS file system (an access point owned by the image's uid 10001).
  data_efs = { file_system_id = "fs-0123456789abcdef0", access_point_id = "fsap-0123456789abcdef0" }
  tags     = { project = "roman-calibration" }
}

output "job_definition" {
  value = module.crds_job.job_definition_name
}
