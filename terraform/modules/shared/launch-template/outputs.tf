output "id" {
  description = "Id of the launch template."
  value       = aws_launch_template.this.id
}

output "latest_version" {
  description = "Its latest version, for the Auto Scaling group (a new version starts the group's instance refresh)."
  value       = aws_launch_template.this.latest_version
}

output "launch_template" {
  description = "The launch template with every attribute, for the callers' plan-level tests."
  value       = aws_launch_template.this
}

output "ami_ssm_parameter" {
  description = "The SSM parameter the AMI id was read from, or null for an explicit ami_id (for the callers' plan-level tests)."
  value       = one(data.aws_ssm_parameter.ami[*].name)
}
