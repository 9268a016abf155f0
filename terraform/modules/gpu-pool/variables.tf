# --- identity and placement --------------------------------------------------

variable "name" {
  description = "Name of the pool: the Auto Scaling group, launch template, role and security group are named after it."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the pool."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets the nodes launch in; several Availability Zones give spot allocation more capacity pools."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 1 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must list at least one subnet id (subnet-...)."
  }
}

# --- what runs on the nodes --------------------------------------------------

variable "model" {
  description = "The model vLLM serves (see modules/config: name, served_name, max_model_len, gpu_memory_utilization, tensor_parallel_size, extra_args, hf_token_parameter)."
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

variable "vllm" {
  description = "vLLM version (pinned), optional pip spec override, port (8000) and --shutdown-timeout in seconds."
  type = object({
    version            = optional(string, "0.33.0")
    pip_spec           = optional(string)
    port               = optional(number, 8000)
    shutdown_timeout_s = optional(number, 90)
  })
  default = {}
}

variable "spotrelay" {
  description = "The spotrelay agent: pip_spec (s3://bucket/key.whl as `spotrelay up` uploads it, a pip requirement, a version or a wheel URL; the agent,gpu extras are added) and sha256 (required: the file's hash, checked before install), plus agent.yaml settings."
  type = object({
    pip_spec             = optional(string)
    sha256               = optional(string)
    drain_on_rebalance   = optional(bool, false)
    safety_margin_s      = optional(number, 10)
    heartbeat_interval_s = optional(number, 2)
    imds_poll_interval_s = optional(number, 1)
    metrics_host         = optional(string, "127.0.0.1")
    metrics_port         = optional(number, 9101)
    webhook_url          = optional(string)
  })
  default = {}
}

variable "router_url" {
  description = "The one endpoint agents register with: the router module's heartbeat_url (an internal load balancer). It does not change with the number of routers, so neither does the user data."
  type        = string
}

variable "router_security_group_id" {
  description = "Security group of the routers: the only source allowed to reach vLLM."
  type        = string

  validation {
    condition     = can(regex("^sg-[0-9a-f]+$", var.router_security_group_id))
    error_message = "router_security_group_id must be a security group id (sg-...)."
  }
}

variable "egress_rules" {
  description = "Egress allow-list of the nodes (map of description, ip_protocol, from_port, to_port, cidr_ipv4 or prefix_list_id; checked by ../shared/security-group). The router module adds the heartbeat rule itself. Default: HTTPS (PyPI, Hugging Face, S3, AWS APIs) and HTTP (the Ubuntu package mirrors apt uses, signature-checked)."
  type = map(object({
    description    = string
    ip_protocol    = optional(string, "tcp")
    from_port      = number
    to_port        = number
    cidr_ipv4      = optional(string)
    prefix_list_id = optional(string)
  }))
  default = {
    https = {
      description = "HTTPS: PyPI (vLLM, spotrelay), Hugging Face and S3 (model weights), the SSM and Auto Scaling APIs"
      from_port   = 443
      to_port     = 443
      cidr_ipv4   = "0.0.0.0/0"
    }
    http = {
      description = "HTTP: the Ubuntu package mirrors of the Deep Learning AMI (apt verifies package signatures)"
      from_port   = 80
      to_port     = 80
      cidr_ipv4   = "0.0.0.0/0"
    }
  }
}

variable "node_token_parameter_arn" {
  description = "ARN of the SSM SecureString parameter holding the node token (the router module's node_token_parameter_arn)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/.+$", var.node_token_parameter_arn))
    error_message = "node_token_parameter_arn must be an SSM parameter ARN."
  }
}

variable "node_token_kms_key_arn" {
  description = "KMS key encrypting the node token parameter, if a customer managed key is used (grants kms:Decrypt through SSM only)."
  type        = string
  default     = null
}

# --- instances and capacity --------------------------------------------------

variable "instance_types" {
  description = "GPU instance types, most preferred first (validated: g4dn, g5, g6, g6e, ... families; each must hold the model, see model_gpu_memory_gib). Ignored with instance_requirements. The defaults (24 GiB GPUs and up) hold a 7-8B 16-bit model; g4dn (16 GiB T4) does not."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge", "g6e.xlarge", "g6.2xlarge", "g5.2xlarge", "g6e.2xlarge"]
}

variable "scaling" {
  description = "min_size, desired_capacity, max_size (default desired + max_size_headroom), on_demand_base_capacity and on_demand_percentage_above_base_capacity."
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

variable "capacity_rebalance" {
  description = "Launch a replacement when EC2 signals elevated interruption risk for a spot node."
  type        = bool
  default     = true
}

variable "health_check_grace_period" {
  description = "Seconds the group waits before health-checking a new node; covers the install and model load."
  type        = number
  default     = 1200

  validation {
    condition     = var.health_check_grace_period >= 300 && var.health_check_grace_period <= 7200
    error_message = "health_check_grace_period must be between 300 and 7200 seconds (vLLM install and model load take minutes)."
  }
}

variable "lifecycle_hook" {
  description = "Termination lifecycle hook: name (default <name>-drain), heartbeat_timeout (30-120 s), default_result. The launch hook is launch_hook."
  type = object({
    name              = optional(string)
    heartbeat_timeout = optional(number, 120)
    default_result    = optional(string, "CONTINUE")
  })
  default = {}
}

variable "ami_id" {
  description = "Explicit AMI id, e.g. one baked with vLLM pre-installed (bake/); null uses ami_ssm_parameter, resolved at plan time."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]+$", coalesce(var.ami_id, "ami-0")))
    error_message = "ami_id must be an AMI id (ami-...)."
  }
}

variable "ami_ssm_parameter" {
  description = "SSM parameter with the GPU AMI id, read at plan time when ami_id is null (a new release rolls out by instance refresh on the next apply). Default: the Deep Learning Base OSS NVIDIA driver AMI on Ubuntu 24.04 (Python 3.12)."
  type        = string
  default     = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
}

variable "root_device_name" {
  description = "Root device name of the AMI (/dev/sda1 on the Ubuntu Deep Learning AMIs)."
  type        = string
  default     = "/dev/sda1"
}

variable "volumes" {
  description = "root_size_gib (>= 50), model_size_gib (0 = no separate model volume; default none with instance_store, 200 without) and model_mount. Both are encrypted gp3."
  type = object({
    root_size_gib  = optional(number, 100)
    model_size_gib = optional(number)
    model_mount    = optional(string, "/opt/models")
  })
  default = {}
}

variable "kms_key_arn" {
  description = "KMS key for the EBS volumes; null uses the account's default EBS key."
  type        = string
  default     = null
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore so operators use Session Manager instead of SSH (no key pair, no port 22)."
  type        = bool
  default     = true
}

variable "enable_cloudwatch_agent" {
  description = "Attach CloudWatchAgentServerPolicy for the CloudWatch agent."
  type        = bool
  default     = false
}

variable "additional_security_group_ids" {
  description = "Extra security groups for the nodes."
  type        = list(string)
  default     = []
}

variable "wait_for_capacity_timeout" {
  description = "How long terraform waits for min_size healthy nodes; \"0\" does not wait (spot capacity can take a while)."
  type        = string
  default     = "0"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
