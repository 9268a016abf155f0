# Model sizing and fast cold start for the GPU pool (docs/deploy.md): the
# model's memory need, where the weights come from, an optional pre-baked AMI,
# and an S3 gateway endpoint so weight downloads stay inside the VPC (no NAT
# data charges, no internet path).

variable "model_params_billion" {
  description = "Parameter count of the model in billions; every instance type is checked against the GPU memory it needs."
  type        = number
  default     = null
}

variable "model_gpu_memory_gib" {
  description = "GPU memory the model needs in GiB, when known (overrides the estimate)."
  type        = number
  default     = null
}

variable "instance_requirements" {
  description = "Attribute-based GPU instance selection instead of instance_types (see the gpu-pool module)."
  type = object({
    vcpu_min                = optional(number, 4)
    vcpu_max                = optional(number)
    memory_gib_min          = optional(number, 16)
    memory_gib_max          = optional(number)
    allowed_instance_types  = optional(list(string), [])
    excluded_instance_types = optional(list(string), [])
  })
  default = null
}

variable "model_s3_uri" {
  description = "Load the weights from this S3 prefix instead of the Hugging Face hub."
  type        = string
  default     = null
}

variable "model_s3_load" {
  description = "copy (parallel download to local NVMe at boot) or stream (vLLM runai_streamer)."
  type        = string
  default     = "copy"
}

variable "gpu_ami_id" {
  description = "AMI with vLLM pre-installed (terraform/modules/gpu-pool/bake); null uses the Deep Learning AMI and installs at boot."
  type        = string
  default     = null
}

variable "s3_gateway_route_table_ids" {
  description = "Route tables of the private subnets: an S3 gateway endpoint is created on them when set (recommended with model_s3_uri)."
  type        = list(string)
  default     = []
}

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
