# Roman ops: a job definition that warms the exposure's CRDS cache and runs romancal on it.
#   terraform init && terraform apply
#   aws batch submit-job --job-name l1 --job-queue <queue> --job-definition crds-job-roman-ops \
#     --container-overrides 'command=["roman","ops","--","strun","romancal.pipeline.ExposurePipeline","l1.asdf"]'
# An array job runs one child per exposure; each child reads AWS_BATCH_JOB_ARRAY_INDEX:
#   aws batch submit-job ... --array-properties size=100 --container-overrides \
#     'command=["roman","ops","--","sh","-c","exec strun romancal.pipeline.ExposurePipeline /data/exposure-$AWS_BATCH_JOB_ARRAY_INDEX.asdf"]'

provider "aws" {
  region = "us-east-1"
}

module "crds_job" {
  source = "../.."

  name        = "crds-job-roman-ops"
  observatory = "roman"
  environment = "ops"
  image       = "123456789012.dkr.ecr.us-east-1.amazonaws.com/romancal-crds-job:0.1.0"
  command     = ["strun", "romancal.pipeline.ExposurePipeline", "l1.asdf"]
  settings    = { CRDS_JOB_CONCURRENCY = "64" }
  tags        = { project = "roman-calibration" }
}

output "job_definition" {
  value = module.crds_job.job_definition_name
}
