# Roman ops, many jobs, one CRDS cache: an EFS file system whose access point is the cache of
# every job of this job definition. A job warms only what its cache lacks; concurrent jobs share
# the work through crds-job's per-file lock (flock, which EFS's NFSv4.1 honours across clients).
#   terraform init && terraform apply -var vpc_id=vpc-... -var 'subnet_ids=["subnet-...","subnet-..."]' \
#     -var job_security_group_id=sg-...
#   aws batch submit-job --job-name night --job-queue <queue> --job-definition crds-job-roman-ops-shared \
#     --array-properties size=100 --container-overrides '{
#       "environment": [{"name": "CRDS_JOB_DATASETS", "value": "/data/exposure-${AWS_BATCH_JOB_ARRAY_INDEX}.asdf"}],
#       "command": ["roman", "ops", "--", "sh", "-c",
#                   "exec strun romancal.pipeline.ExposurePipeline /data/exposure-$AWS_BATCH_JOB_ARRAY_INDEX.asdf"]}'
# Every client of this file system must mount it with locks (NFSv4.1, as Batch and efs-utils do),
# never with nolock or local_lock: see ../../README.md.

provider "aws" {
  region = "us-east-1"
}

variable "vpc_id" {
  description = "VPC of the Batch compute environment."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the Batch compute environment, one per Availability Zone: a mount target in each."
  type        = list(string)
}

variable "job_security_group_id" {
  description = "Security group of the Batch jobs (the compute environment's): it may reach the mount targets (NFS, 2049)."
  type        = string
}

# Elastic throughput: a warm writes in bursts, then the jobs mostly read; paid for as used.
resource "aws_efs_file_system" "crds_cache" {
  creation_token   = "crds-cache-roman-ops"
  encrypted        = true
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"
  tags             = { Name = "crds-cache-roman-ops", project = "roman-calibration" }
}

resource "aws_security_group" "crds_cache" {
  name        = "crds-cache-roman-ops"
  description = "NFS from the crds-job Batch jobs to the CRDS cache's mount targets"
  vpc_id      = var.vpc_id

  ingress {
    description     = "NFS (TLS through efs-utils' tunnel)"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [var.job_security_group_id]
  }
}

resource "aws_efs_mount_target" "crds_cache" {
  for_each        = toset(var.subnet_ids)
  file_system_id  = aws_efs_file_system.crds_cache.id
  subnet_id       = each.value
  security_groups = [aws_security_group.crds_cache.id]
}

# The cache: every file operation through it is uid/gid 10001 (the image's user, whatever user the
# container runs as), in a root directory EFS creates owned by 10001, mode 0755.
resource "aws_efs_access_point" "crds_cache" {
  file_system_id = aws_efs_file_system.crds_cache.id

  posix_user {
    uid = 10001
    gid = 10001
  }

  root_directory {
    path = "/roman/ops"
    creation_info {
      owner_uid   = 10001
      owner_gid   = 10001
      permissions = "0755"
    }
  }

  tags = { Name = "crds-cache-roman-ops" }
}

module "crds_job" {
  source = "../.."

  name        = "crds-job-roman-ops-shared"
  observatory = "roman"
  environment = "ops"
  image       = "123456789012.dkr.ecr.us-east-1.amazonaws.com/romancal-crds-job:0.1.0"
  command     = ["strun", "romancal.pipeline.ExposurePipeline", "/data/l1.asdf"]
  # The shared cache, at the container's CRDS_PATH (/crds-cache); Fargate's ephemeral storage is
  # then left at its default 20 GiB (the run's, not the cache's).
  cache_efs_file_system_id  = aws_efs_file_system.crds_cache.id
  cache_efs_access_point_id = aws_efs_access_point.crds_cache.id
  # The exposures, and the products: another EFS file system (an access point owned by uid 10001).
  data_efs = { file_system_id = "fs-0fedcba9876543210", access_point_id = "fsap-0fedcba9876543210" }
  tags     = { project = "roman-calibration" }
}

# Without a file system policy EFS lets any client that reaches a mount target in; with this one,
# only the job role, only through the cache's access point, only over TLS.
data "aws_iam_policy_document" "crds_cache" {
  statement {
    sid     = "CrdsJobThroughTheCacheAccessPoint"
    actions = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    principals {
      type        = "AWS"
      identifiers = [module.crds_job.job_role_arn]
    }
    resources = [aws_efs_file_system.crds_cache.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.crds_cache.arn]
    }
  }
  statement {
    sid     = "TlsOnly"
    effect  = "Deny"
    actions = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    resources = [aws_efs_file_system.crds_cache.arn]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_efs_file_system_policy" "crds_cache" {
  file_system_id = aws_efs_file_system.crds_cache.id
  policy         = data.aws_iam_policy_document.crds_cache.json
}

output "job_definition" {
  value = module.crds_job.job_definition_name
}

output "crds_cache" {
  description = "The shared cache: its file system and access point."
  value       = { file_system_id = aws_efs_file_system.crds_cache.id, access_point_id = aws_efs_access_point.crds_cache.id }
}
