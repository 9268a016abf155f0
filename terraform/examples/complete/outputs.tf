# `spotrelay status` reads router_url, node_token_parameter_name,
# gpu_pool_asg_name and aws_region.

output "router_url" {
  description = "Base URL of the OpenAI-compatible API (append /v1 for SDKs)."
  value       = module.router.endpoint
}

output "model" {
  description = "Model name to send in requests."
  value       = module.gpu_pool.served_model_name
}

output "router_node_urls" {
  description = "Each router's own URL (agents heartbeat these)."
  value       = module.router.node_urls
}

output "node_token_parameter_name" {
  description = "SSM parameter with the node token (for `spotrelay status` and operators)."
  value       = module.router.node_token_parameter_name
}

output "gpu_pool_asg_name" {
  description = "The spot GPU Auto Scaling group."
  value       = module.gpu_pool.autoscaling_group_name
}

output "router_asg_names" {
  description = "The routers' one-instance Auto Scaling groups."
  value       = module.router.autoscaling_group_names
}

output "aws_region" {
  description = "Region of the deployment."
  value       = var.region
}
