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
  description = "GPU instance types for the spot pool, most preferred first; each must hold the model (checked at plan time with model_params_billion or model_gpu_memory_gib)."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge", "g6e.xlarge", "g6.2xlarge", "g5.2xlarge", "g6e.2xlarge"]
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

variable "spotrelay_wheel" {
  description = "The spotrelay wheel in the artifacts bucket (artifacts.tf) that routers and nodes install: its key and sha256. `spotrelay up` builds it from the checkout, uploads it and sets this."
  type = object({
    key    = string
    sha256 = string
  })
  default = null

  validation {
    condition     = var.spotrelay_wheel != null || var.spotrelay_pip_spec != null
    error_message = "Set spotrelay_wheel (what `spotrelay up` uploads to the artifacts bucket) or spotrelay_pip_spec with spotrelay_sha256 (a release pinned by hash)."
  }

  validation {
    condition     = var.spotrelay_wheel == null || var.spotrelay_pip_spec == null
    error_message = "Set spotrelay_wheel or spotrelay_pip_spec, not both."
  }

  validation {
    condition     = var.spotrelay_wheel == null || can(regex("^[0-9a-f]{64}$", var.spotrelay_wheel.sha256)) && can(regex("\\.whl$", var.spotrelay_wheel.key))
    error_message = "spotrelay_wheel: key must name a .whl object and sha256 be 64 lowercase hex digits."
  }
}

variable "engine_port" {
  description = "Port of vLLM on the GPU nodes: the nodes listen on it, and the routers (and their security group) reach the nodes on it."
  type        = number
  default     = 8000
}

variable "spotrelay_pip_spec" {
  description = "Instead of spotrelay_wheel: a pip requirement (spotrelay==X) or wheel URL, installed only if its file matches spotrelay_sha256."
  type        = string
  default     = null
}

variable "spotrelay_sha256" {
  description = "sha256 of the file spotrelay_pip_spec downloads (required with it)."
  type        = string
  default     = null

  validation {
    condition     = var.spotrelay_pip_spec == null || var.spotrelay_sha256 != null
    error_message = "spotrelay_pip_spec needs spotrelay_sha256: a package from an index is installed only pinned by hash."
  }
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

# --- model sizing and cold start (cold_start.tf) ---

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
