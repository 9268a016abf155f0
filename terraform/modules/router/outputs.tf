output "endpoint" {
  description = "Base URL clients use (OpenAI base_url is endpoint + \"/v1\")."
  value       = "${local.https ? "https" : "http"}://${aws_lb.this.dns_name}"
}

output "lb_dns_name" {
  description = "DNS name of the load balancer."
  value       = aws_lb.this.dns_name
}

output "lb_arn" {
  description = "ARN of the load balancer (attach a WAF here)."
  value       = aws_lb.this.arn
}

output "lb_zone_id" {
  description = "Hosted zone of the load balancer, for a Route 53 alias."
  value       = aws_lb.this.zone_id
}

output "target_group_arn" {
  description = "Target group of the routers."
  value       = aws_lb_target_group.router.arn
}

output "node_urls" {
  description = "Each router's fixed URL: what agents register with (the gpu-pool module's router_urls)."
  value       = local.node_urls
}

output "security_group_id" {
  description = "Security group of the routers (the gpu-pool module's router_security_group_id)."
  value       = aws_security_group.router.id
}

output "node_token_parameter_name" {
  description = "SSM parameter holding the node token."
  value       = aws_ssm_parameter.node_token.name
}

output "node_token_parameter_arn" {
  description = "ARN of the SSM parameter holding the node token (the gpu-pool module's node_token_parameter_arn)."
  value       = aws_ssm_parameter.node_token.arn
}

output "autoscaling_group_names" {
  description = "The one-instance Auto Scaling group of each router slot."
  value       = aws_autoscaling_group.router[*].name
}

output "iam_role_name" {
  description = "Name of the routers' IAM role."
  value       = aws_iam_role.router.name
}

output "router_config" {
  description = "The /etc/spotrelay/router.yaml every router gets."
  value       = module.config.router_yaml
}
