output "endpoint" {
  description = "Base URL clients use (OpenAI base_url is endpoint + \"/v1\")."
  value       = "${local.https ? "https" : "http"}://${aws_lb.this.dns_name}"
}

output "heartbeat_url" {
  description = "The internal endpoint agents register with (the gpu-pool module's router_url); independent of router_count."
  value       = local.heartbeat_url
}

output "control_url" {
  description = "The routers' internal control endpoint (GET /nodes for spotrelay status): the heartbeat endpoint, reachable inside the VPC only."
  value       = local.heartbeat_url
}

output "lb_dns_name" {
  description = "DNS name of the public load balancer."
  value       = aws_lb.this.dns_name
}

output "lb_arn" {
  description = "ARN of the public load balancer (attach a WAF here)."
  value       = aws_lb.this.arn
}

output "lb_zone_id" {
  description = "Hosted zone of the public load balancer, for a Route 53 alias."
  value       = aws_lb.this.zone_id
}

output "target_group_arn" {
  description = "Target group of the routers behind the public load balancer."
  value       = aws_lb_target_group.routers["public"].arn
}

output "security_group_id" {
  description = "Security group of the routers (the gpu-pool module's router_security_group_id: the only source reaching the engine)."
  value       = local.sg.router
}

output "heartbeat_security_group_id" {
  description = "Security group of the internal heartbeat endpoint."
  value       = local.sg.heartbeat
}

output "registry_endpoint" {
  description = "Primary endpoint of the ElastiCache registry (TLS)."
  value       = aws_elasticache_replication_group.registry.primary_endpoint_address
}

output "registry_auth_token_parameter_name" {
  description = "SSM parameter holding the registry's AUTH token."
  value       = aws_ssm_parameter.registry_auth_token.name
}

output "node_token_parameter_name" {
  description = "SSM parameter holding the node token."
  value       = aws_ssm_parameter.node_token.name
}

output "node_token_parameter_arn" {
  description = "ARN of the SSM parameter holding the node token (the gpu-pool module's node_token_parameter_arn)."
  value       = aws_ssm_parameter.node_token.arn
}

output "autoscaling_group_name" {
  description = "The routers' Auto Scaling group."
  value       = aws_autoscaling_group.router.name
}

output "iam_role_name" {
  description = "Name of the routers' IAM role."
  value       = module.instance_role.role_name
}

output "router_config" {
  description = "The /etc/spotrelay/router.yaml every router gets."
  value       = module.config.router_yaml
}

output "node_port" {
  description = "The engine port on the GPU nodes that the routers' security group may reach (node_port)."
  value       = var.node_port
}
