variable "name" {
  description = "Name of the job definition, and prefix of the roles and log group."
  type        = string
  default     = "crds-job"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,95}$", var.name))
    error_message = "name: letters, digits, - and _, at most 96 characters."
  }
}

variable "observatory" {
  description = "CRDS observatory whose cache the job warms: roman or hst (from S3), jwst (from its CRDS server: no S3 cache)."
  type        = string

  validation {
    condition     = contains(["roman", "hst", "jwst"], var.observatory)
    error_message = "observatory must be roman, hst or jwst."
  }
}

variable "environment" {
  description = "CRDS environment: roman ops/test/int/dev, hst ops/test, jwst ops/test."
  type        = string

  validation {
    condition = contains(
      lookup({ roman = ["ops", "test", "int", "dev"], hst = ["ops", "test"], jwst = ["ops", "test"] }, var.observatory, []),
      var.environment,
    )
    error_message = "environment must be one of ops, test, int, dev for roman, ops or test for hst and jwst."
  }
}

variable "image" {
  description = "Container image: crds-job, or a calibration image with crds-job layered on it."
  type        = string
}

variable "command" {
  description = "Calibration command run after the warm (exec'd); empty: warm only."
  type        = list(string)
  default     = []
}

variable "context" {
  description = "CRDS context to pin (e.g. roman_0055.pmap); empty: the bucket's latest at run time."
  type        = string
  default     = ""
}

variable "settings" {
  description = "More crds-job settings, as CRDS_JOB_<OPTION> environment variables (see the README)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.settings) : startswith(key, "CRDS_JOB_")])
    error_message = "settings keys are CRDS_JOB_<OPTION> variables."
  }
}

variable "bucket" {
  description = "Private mirror: its bucket (empty: STScI's for observatory/environment)."
  type        = string
  default     = ""
}

variable "prefix" {
  description = "Private mirror: key prefix in that bucket, e.g. /roman/crds (null: STScI's)."
  type        = string
  default     = null
}

variable "server" {
  description = "CRDS server to read, where the job reads one (JWST; a context its bucket no longer holds); empty: STScI's for observatory/environment."
  type        = string
  default     = ""

  validation {
    condition     = var.server == "" || can(regex("^https?://[^\\s/]+(/\\S*)?$", var.server))
    error_message = "server is an http:// or https:// URL, e.g. https://jwst-crds.stsci.edu."
  }
}

variable "platform" {
  description = "AWS Batch platform capability: FARGATE or EC2."
  type        = string
  default     = "FARGATE"

  validation {
    condition     = contains(["FARGATE", "EC2"], var.platform)
    error_message = "platform must be FARGATE or EC2."
  }
}

variable "vcpu" {
  description = "vCPUs of the container."
  type        = number
  default     = 4
}

variable "memory_mib" {
  description = "Memory of the container, in MiB."
  type        = number
  default     = 16384
}

variable "ephemeral_storage_gib" {
  description = "Fargate ephemeral storage for the cache and the run, in GiB (21 to 200). A whole Roman context is about 150 GB. null: 200, or Fargate's default 20 with an EFS cache (cache_efs_file_system_id), which leaves only the run local."
  type        = number
  default     = null

  validation {
    condition     = coalesce(var.ephemeral_storage_gib, 200) >= 21 && coalesce(var.ephemeral_storage_gib, 200) <= 200
    error_message = "Fargate ephemeral storage is 21 to 200 GiB."
  }
}

variable "attempts" {
  description = "Attempts of a job: S3 or CRDS server (exit 69) and integrity (exit 74) failures are retried, nothing else."
  type        = number
  default     = 3

  validation {
    condition     = var.attempts >= 1 && var.attempts <= 10
    error_message = "AWS Batch allows 1 to 10 attempts."
  }
}

variable "timeout_seconds" {
  description = "Time limit of one attempt, warm and calibration together."
  type        = number
  default     = 21600
}

variable "data_efs" {
  description = "EFS file system mounted at data_mount_path: the exposures, and where the calibration writes. null: none (the exposures are then in the image, or s3:// URLs the role may read)."
  type = object({
    file_system_id  = string
    access_point_id = optional(string)
    root_directory  = optional(string, "/")
  })
  default = null
}

variable "data_mount_path" {
  description = "Where data_efs is mounted in the container."
  type        = string
  default     = "/data"

  validation {
    condition     = startswith(var.data_mount_path, "/") && var.data_mount_path != "/crds-cache"
    error_message = "data_mount_path is an absolute path other than the cache's (/crds-cache)."
  }
}

variable "cache_efs_file_system_id" {
  description = "EFS file system of a CRDS cache shared by every job mounting it (fs-...), mounted at the container's CRDS_PATH through cache_efs_access_point_id. null: the job's own cache, in its ephemeral storage."
  type        = string
  default     = null

  validation {
    condition     = var.cache_efs_file_system_id == null || can(regex("^fs-[0-9a-f]{8,40}$", var.cache_efs_file_system_id))
    error_message = "cache_efs_file_system_id is an EFS file system ID, fs-0123456789abcdef0."
  }
}

variable "cache_efs_access_point_id" {
  description = "EFS access point of the cache (fsap-...): required with cache_efs_file_system_id. Its POSIX user is the image's uid 10001, its root directory (created owned by 10001, mode 0755) the cache."
  type        = string
  default     = null

  validation {
    condition     = (var.cache_efs_access_point_id == null) == (var.cache_efs_file_system_id == null)
    error_message = "cache_efs_access_point_id and cache_efs_file_system_id go together: the cache is mounted only through an access point (uid 10001, IAM authorization)."
  }

  validation {
    condition     = var.cache_efs_access_point_id == null || can(regex("^fsap-[0-9a-f]{8,40}$", var.cache_efs_access_point_id))
    error_message = "cache_efs_access_point_id is an EFS access point ID, fsap-0123456789abcdef0."
  }
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log group."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
