output "autoscaling_group_name" {
  description = "Name of the GPU Auto Scaling group (what `spotrelay status` lists)."
  value       = aws_autoscaling_group.node.name
}

output "autoscaling_group_arn" {
  description = "ARN of the GPU Auto Scaling group."
  value       = aws_autoscaling_group.node.arn
}

output "launch_template_id" {
  description = "ID of the launch template."
  value       = module.launch_template.id
}

output "launch_template_latest_version" {
  description = "Latest version of the launch template."
  value       = module.launch_template.latest_version
}

output "engine_port" {
  description = "The port vLLM listens on (vllm.port): pass it to the router module's node_port."
  value       = var.vllm.port
}

output "instance_tags" {
  description = "The tags every GPU instance and its volumes carry (the group's propagate_at_launch tags and the launch template's tag_specifications): cost allocation tags go in var.tags."
  value       = local.tags
}

output "security_group_id" {
  description = "Security group of the GPU nodes."
  value       = module.node_security_group.id
}

output "iam_role_arn" {
  description = "ARN of the nodes' IAM role."
  value       = module.instance_role.role_arn
}

output "iam_role_name" {
  description = "Name of the nodes' IAM role (attach extra policies here)."
  value       = module.instance_role.role_name
}

output "instance_profile_arn" {
  description = "ARN of the nodes' instance profile."
  value       = module.instance_role.instance_profile_arn
}

output "lifecycle_hook_name" {
  description = "Name of the termination lifecycle hook the agent completes."
  value       = aws_autoscaling_lifecycle_hook.node["terminate"].name
}

output "served_model_name" {
  description = "Model name clients put in requests."
  value       = module.config.served_model_name
}

output "instance_types" {
  description = "Instance types of the mixed instances policy, in preference order."
  value       = [for o in module.config.instance_overrides : o.instance_type]
}

output "agent_config" {
  description = "The /etc/spotrelay/agent.yaml every node gets."
  value       = module.config.agent_yaml
}

output "user_data" {
  description = "The rendered cloud-init user data (contains no secrets: tokens are fetched from SSM at boot)."
  value       = module.config.user_data
}

output "launch_template_user_data_sha256" {
  description = "SHA-256 of the launch template's user data (as stored in the launch template): when it changes, an instance refresh replaces the nodes."
  value       = sha256(module.launch_template.launch_template.user_data)
}
