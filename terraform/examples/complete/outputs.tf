# `spotrelay status` reads router_control_url, node_token_parameter_name,
# gpu_pool_asg_name and aws_region.

output "router_url" {
  description = "Base URL of the OpenAI-compatible API (append /v1 for SDKs)."
  value       = module.router.endpoint
}

output "router_control_url" {
  description = "The routers' internal control endpoint (heartbeats, GET /nodes): reachable inside the VPC only."
  value       = module.router.control_url
}

output "model" {
  description = "Model name to send in requests."
  value       = module.gpu_pool.served_model_name
}

output "node_token_parameter_name" {
  description = "SSM parameter with the node token (for `spotrelay status` and operators)."
  value       = module.router.node_token_parameter_name
}

output "gpu_pool_asg_name" {
  description = "The spot GPU Auto Scaling group."
  value       = module.gpu_pool.autoscaling_group_name
}

output "gpu_pool_user_data_sha256" {
  description = "Fingerprint of the GPU launch template's user data: when it changes, the nodes are replaced (it does not depend on router_count)."
  value       = module.gpu_pool.launch_template_user_data_sha256
}

output "router_asg_name" {
  description = "The routers' Auto Scaling group."
  value       = module.router.autoscaling_group_name
}

output "aws_region" {
  description = "Region of the deployment."
  value       = var.region
}
