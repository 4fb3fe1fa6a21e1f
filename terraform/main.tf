# AWS Batch job definition for crds-job: the IAM role that may read only the CRDS cache of one
# observatory/environment, an execution role, a log group, and the job definition itself. The cache
# is the job's own (Fargate ephemeral storage), or an EFS access point every job shares (cache_efs_*).
# JWST has no S3 cache: its job reads its public CRDS server, and its role may read no bucket.

data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  # STScI's CRDS caches on S3 (crds_job/environments.py; a test keeps the two equal). JWST has
  # none: bucket "" (its CRDS server, https://jwst-crds[-test].stsci.edu, is its only source).
  caches = {
    roman = {
      ops  = { bucket = "stpubdata", prefix = "roman/crds" }
      test = { bucket = "stpubdata-tst", prefix = "roman/crds/test" }
      int  = { bucket = "stpubdata-tst", prefix = "roman/crds/int" }
      dev  = { bucket = "stpubdata-tst", prefix = "roman/crds/dev" }
    }
    hst = {
      ops  = { bucket = "hst-crds-cache-ops", prefix = "" }
      test = { bucket = "hst-crds-cache-test", prefix = "" }
    }
    jwst = {
      ops  = { bucket = "", prefix = "" }
      test = { bucket = "", prefix = "" }
    }
  }
  default_cache = local.caches[var.observatory][var.environment]
  bucket        = var.bucket != "" ? var.bucket : local.default_cache.bucket
  prefix        = trim(var.prefix != null ? var.prefix : local.default_cache.prefix, "/")
  # No bucket (JWST, unless a private mirror is named): no S3 permission, the CRDS server only.
  reads_s3 = local.bucket != ""
  job_role_description = (local.reads_s3
    ? "crds-job: read the CRDS cache of ${var.observatory} ${var.environment} on S3"
    : "crds-job: ${var.observatory} ${var.environment} from its CRDS server, no S3 access"
  )

  # The job may read this observatory's CRDS cache, nothing else: its config, its mappings or pickles
  # (STScI's HST buckets hold contexts as pickles, without mappings), its references.
  readable = [for area in ["config", "mappings", "pickles", "references"] : join("/", compact([local.prefix, area, var.observatory]))]

  # The cache path is the image's volume (Dockerfile: VOLUME /crds-cache, ENV CRDS_PATH).
  environment = merge(
    {
      CRDS_JOB_OBSERVATORY = var.observatory
      CRDS_JOB_ENVIRONMENT = var.environment
      CRDS_PATH            = "/crds-cache"
    },
    var.context != "" ? { CRDS_JOB_CONTEXT = var.context } : {},
    var.bucket != "" ? { CRDS_JOB_BUCKET = var.bucket } : {},
    var.prefix != null ? { CRDS_JOB_PREFIX = var.prefix == "" ? "/" : var.prefix } : {}, # "" would be unset
    # auto would come to the server too; said, so the job never tries S3 with a role that reads none.
    local.reads_s3 ? {} : { CRDS_JOB_SOURCE = "server" },
    var.server != "" ? { CRDS_JOB_SERVER = var.server } : {},
    var.settings,
  )

  command = concat([var.observatory, var.environment], length(var.command) > 0 ? concat(["--"], var.command) : [])

  # crds-job's exit codes (crds_job/errors.py): S3 or CRDS server access (69) and integrity (74) may pass.
  retryable_exit_codes = ["69", "74"]

  fargate = var.platform == "FARGATE"

  # The exposures' volume, if any (EFS: Fargate's only network file system).
  data_volumes = var.data_efs == null ? [] : [{
    name = "data"
    efsVolumeConfiguration = merge(
      { fileSystemId = var.data_efs.file_system_id, transitEncryption = "ENABLED" },
      # An access point sets its own root directory, and is used with the job's role.
      var.data_efs.access_point_id == null ? { rootDirectory = var.data_efs.root_directory } : {},
      var.data_efs.access_point_id != null ? {
        authorizationConfig = { accessPointId = var.data_efs.access_point_id, iam = "ENABLED" }
      } : {},
    )
  }]
  data_mount_points = [for volume in local.data_volumes : {
    sourceVolume = volume.name, containerPath = var.data_mount_path, readOnly = false
  }]

  # The CRDS cache on EFS, shared by every job mounting the same access point: mounted where the
  # container's CRDS_PATH points, read-write (crds-job warms it), only through the access point
  # (its POSIX user, uid 10001, and its root directory), TLS in transit, the job role's IAM.
  # Batch wants no rootDirectory (or "/") beside an access point: the access point sets it.
  shared_cache = var.cache_efs_file_system_id != null
  cache_volumes = local.shared_cache ? [{
    name = "crds-cache"
    efsVolumeConfiguration = {
      fileSystemId        = var.cache_efs_file_system_id
      transitEncryption   = "ENABLED"
      authorizationConfig = { accessPointId = var.cache_efs_access_point_id, iam = "ENABLED" }
    }
  }] : []
  cache_mount_points = [for volume in local.cache_volumes : {
    sourceVolume = volume.name, containerPath = local.environment["CRDS_PATH"], readOnly = false
  }]

  volumes      = concat(local.cache_volumes, local.data_volumes)
  mount_points = concat(local.cache_mount_points, local.data_mount_points)

  # Fargate's ephemeral storage holds the cache unless EFS does; with an EFS cache only the run
  # is local, and Fargate's own 20 GiB (no ephemeralStorage, not billed) is left unless one is set.
  ephemeral_storage_gib = !local.fargate ? null : (
    var.ephemeral_storage_gib != null ? var.ephemeral_storage_gib : (local.shared_cache ? null : 200)
  )
  efs_arn = "arn:${data.aws_partition.current.partition}:elasticfilesystem:${data.aws_region.current.name}:*"
}

data "aws_iam_policy_document" "assume_ecs_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "read_crds_cache" {
  count = local.reads_s3 ? 1 : 0
  statement {
    sid       = "ReadCrdsFiles"
    actions   = ["s3:GetObject"]
    resources = [for path in local.readable : "arn:${data.aws_partition.current.partition}:s3:::${local.bucket}/${path}/*"]
  }
  statement {
    sid       = "ListCrdsContexts"
    actions   = ["s3:ListBucket"]
    resources = ["arn:${data.aws_partition.current.partition}:s3:::${local.bucket}"]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [for path in local.readable : "${path}/*"]
    }
  }
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/aws/batch/${var.name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_iam_role" "job" {
  name               = "${var.name}-job"
  description        = local.job_role_description
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "read_crds_cache" {
  count  = local.reads_s3 ? 1 : 0
  name   = "read-crds-cache"
  role   = aws_iam_role.job.id
  policy = data.aws_iam_policy_document.read_crds_cache[0].json
}

# The policy had no count before JWST: an existing roman/hst deployment keeps it, not replaces it.
moved {
  from = aws_iam_role_policy.read_crds_cache
  to   = aws_iam_role_policy.read_crds_cache[0]
}

data "aws_iam_policy_document" "use_data_efs" {
  count = var.data_efs == null ? 0 : 1
  statement {
    sid     = "MountDataVolume"
    actions = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [
      "arn:${data.aws_partition.current.partition}:elasticfilesystem:${data.aws_region.current.name}:*:file-system/${var.data_efs.file_system_id}",
    ]
  }
}

resource "aws_iam_role_policy" "use_data_efs" {
  count  = var.data_efs == null ? 0 : 1
  name   = "use-data-efs"
  role   = aws_iam_role.job.id
  policy = data.aws_iam_policy_document.use_data_efs[0].json
}

data "aws_iam_policy_document" "use_cache_efs" {
  count = local.shared_cache ? 1 : 0
  statement {
    sid       = "MountCrdsCache"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = ["${local.efs_arn}:file-system/${var.cache_efs_file_system_id}"]
    # Through the cache's access point only (its uid and root directory), never the whole file system.
    condition {
      test     = "ArnLike"
      variable = "elasticfilesystem:AccessPointArn"
      values   = ["${local.efs_arn}:access-point/${var.cache_efs_access_point_id}"]
    }
  }
}

resource "aws_iam_role_policy" "use_cache_efs" {
  count  = local.shared_cache ? 1 : 0
  name   = "use-cache-efs"
  role   = aws_iam_role.job.id
  policy = data.aws_iam_policy_document.use_cache_efs[0].json
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  description        = "crds-job: pull the image and write logs"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_batch_job_definition" "this" {
  name                  = var.name
  type                  = "container"
  platform_capabilities = [var.platform]
  propagate_tags        = true
  tags                  = var.tags

  container_properties = jsonencode(merge(
    {
      image            = var.image
      command          = local.command
      jobRoleArn       = aws_iam_role.job.arn
      executionRoleArn = aws_iam_role.execution.arn
      resourceRequirements = [
        { type = "VCPU", value = tostring(var.vcpu) },
        { type = "MEMORY", value = tostring(var.memory_mib) },
      ]
      environment = [for key in sort(keys(local.environment)) : { name = key, value = local.environment[key] }]
      volumes     = local.volumes
      mountPoints = local.mount_points
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          "awslogs-group"         = aws_cloudwatch_log_group.this.name
          "awslogs-region"        = data.aws_region.current.name
          "awslogs-stream-prefix" = var.name
        }
      }
    },
    # LATEST: Fargate 1.4.0 or later, the first to mount EFS.
    local.fargate ? {
      networkConfiguration         = { assignPublicIp = "ENABLED" }
      fargatePlatformConfiguration = { platformVersion = "LATEST" }
    } : {},
    local.ephemeral_storage_gib != null ? { ephemeralStorage = { sizeInGiB = local.ephemeral_storage_gib } } : {},
  ))

  retry_strategy {
    attempts = var.attempts

    dynamic "evaluate_on_exit" {
      for_each = local.retryable_exit_codes
      content {
        on_exit_code = evaluate_on_exit.value
        action       = "RETRY"
      }
    }
    # A reclaimed Spot host is not the job's fault either.
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "RETRY"
    }
    # Every other exit code (usage, bucket content, disk, the calibration's own failure) is final.
    evaluate_on_exit {
      on_exit_code = "*"
      action       = "EXIT"
    }
  }

  timeout {
    attempt_duration_seconds = var.timeout_seconds
  }
}
