# Model sizing and fast cold start for the GPU pool (docs/deploy.md): the
# model's memory need, where the weights come from, an optional pre-baked AMI,
# and an S3 gateway endpoint so weight downloads stay inside the VPC (no NAT
# data charges, no internet path).

resource "aws_vpc_endpoint" "s3" {
  count = length(var.s3_gateway_route_table_ids) > 0 ? 1 : 0

  vpc_id            = var.vpc_id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = var.s3_gateway_route_table_ids
  tags              = { Name = "${var.name}-s3" }
}

output "gpu_pool_launch_hook_timeout_s" {
  description = "Launch hook heartbeat timeout (`spotrelay status`: older instances that never registered are flagged)."
  value       = module.gpu_pool.launch_hook_timeout_s
}

output "gpu_pool_install_script" {
  description = "The GPU node bootstrap script (input of the AMI bake: terraform/modules/gpu-pool/bake)."
  value       = module.gpu_pool.install_script
}
