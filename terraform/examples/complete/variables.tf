variable "name" {
  description = "Name of the deployment; prefixes every resource."
  type        = string
  default     = "spotrelay"
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "vpc_id" {
  description = "Existing VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Existing private subnets (>= 2 AZs, with NAT egress) for the routers, the registry and the GPU nodes."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Existing public subnets (>= 2 AZs) for an internet-facing load balancer; the private subnets are used when alb_internal is true."
  type        = list(string)
  default     = []
}

variable "alb_internal" {
  description = "Keep the load balancer internal (clients inside the VPC or over VPN/peering). Set false for internet clients: that requires certificate_arn and api_keys_parameter."
  type        = bool
  default     = true
}

variable "allowed_cidrs" {
  description = "Client networks allowed to reach the load balancer."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for HTTPS on the load balancer (HTTP then redirects); required when alb_internal is false. Null on an internal load balancer serves plain HTTP inside the VPC."
  type        = string
  default     = null
}

variable "api_keys_parameter" {
  description = "SSM SecureString parameter with the data-plane API keys, comma-separated (create it with the AWS CLI so the keys stay out of state); required when alb_internal is false."
  type        = string
  default     = null
}

variable "node_token_version" {
  description = "Bump to rotate the node token (a new write-only value is stored in SSM; then refresh routers and GPU nodes)."
  type        = number
  default     = 1
}

variable "monitoring_cidrs" {
  description = "CIDRs inside the VPC that may scrape each router's /metrics directly."
  type        = list(string)
  default     = []
}

variable "operator_cidrs" {
  description = "CIDRs inside your network (VPN, bastion) that may reach the internal control endpoint for `spotrelay status`."
  type        = list(string)
  default     = []
}

variable "model" {
  description = "The model to serve (name, served_name, max_model_len, gpu_memory_utilization, tensor_parallel_size, extra_args, hf_token_parameter)."
  type = object({
    name                   = string
    served_name            = optional(string)
    max_model_len          = optional(number)
    gpu_memory_utilization = optional(number, 0.9)
    tensor_parallel_size   = optional(number, 1)
    extra_args             = optional(list(string), [])
    hf_token_parameter     = optional(string)
  })
}

variable "instance_types" {
  description = "GPU instance types for the spot pool, most preferred first."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge", "g6e.xlarge", "g4dn.xlarge", "g6.2xlarge", "g5.2xlarge"]
}

variable "scaling" {
  description = "GPU pool sizes and on-demand share."
  type = object({
    min_size                                 = optional(number, 0)
    desired_capacity                         = optional(number, 1)
    max_size                                 = optional(number)
    max_size_headroom                        = optional(number, 1)
    on_demand_base_capacity                  = optional(number, 0)
    on_demand_percentage_above_base_capacity = optional(number, 0)
  })
  default = {}
}

variable "vllm_version" {
  description = "Pinned vLLM version on the GPU nodes."
  type        = string
  default     = "0.33.0"
}

variable "spotrelay_pip_spec" {
  description = "pip requirement or wheel URL for spotrelay on routers and nodes."
  type        = string
  default     = "spotrelay==0.1.0"
}

variable "router_instance_type" {
  description = "On-demand instance type of the routers."
  type        = string
  default     = "c7i.large"
}

variable "router_count" {
  description = "Number of routers."
  type        = number
  default     = 2
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
