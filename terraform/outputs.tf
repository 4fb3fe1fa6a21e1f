output "job_definition_arn" {
  description = "ARN of the job definition (with its revision)."
  value       = aws_batch_job_definition.this.arn
}

output "job_definition_name" {
  description = "Name of the job definition, for aws batch submit-job --job-definition."
  value       = aws_batch_job_definition.this.name
}

output "job_role_arn" {
  description = "Role of the running job: read-only access to the CRDS cache on S3 (none for JWST)."
  value       = aws_iam_role.job.arn
}

output "execution_role_arn" {
  description = "Role ECS uses to pull the image and write the logs."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the job's JSON log lines."
  value       = aws_cloudwatch_log_group.this.name
}

output "s3_location" {
  description = "The CRDS cache the job reads on S3; null where there is none (JWST: its CRDS server)."
  value       = local.reads_s3 ? "s3://${local.bucket}/${local.prefix}" : null
}

output "environment" {
  description = "The environment variables the job's container gets (crds-job settings, CRDS_PATH)."
  value       = local.environment
}

output "command" {
  description = "The container's command: crds-job's arguments, then the calibration command."
  value       = local.command
}

output "volumes" {
  description = "The job definition's volumes and where the container mounts them (the cache's EFS and the exposures', if any)."
  value       = { volumes = local.volumes, mountPoints = local.mount_points }
}

output "ephemeral_storage_gib" {
  description = "Fargate ephemeral storage the job definition asks for, in GiB; null: none asked (EC2, or Fargate's default 20 beside an EFS cache)."
  value       = local.ephemeral_storage_gib
}
