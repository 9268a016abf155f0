output "role_name" {
  description = "Name of the role."
  value       = aws_iam_role.this.name
}

output "role_id" {
  description = "Id of the role (its name), what further inline policies (aws_iam_role_policy) attach to."
  value       = aws_iam_role.this.id
}

output "role_arn" {
  description = "ARN of the role."
  value       = aws_iam_role.this.arn
}

output "instance_profile_arn" {
  description = "ARN of the instance profile, for the launch template."
  value       = aws_iam_instance_profile.this.arn
}

output "policy_json" {
  description = "The inline policy document."
  value       = data.aws_iam_policy_document.this.json
}

output "managed_policy_arns" {
  description = "The attached AWS managed policies' ARNs, by key."
  value       = { for k, a in aws_iam_role_policy_attachment.managed : k => a.policy_arn }
}
