variable "name" {
  description = "Name of the router deployment; prefixes every resource."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the routers and the load balancer."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets for the router instances, in at least 2 Availability Zones; routers are spread over them round-robin."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must list at least 2 subnet ids (2 Availability Zones)."
  }
}

variable "load_balancer" {
  description = "The Application Load Balancer: subnets (public ones for internet clients, >= 2 AZs), internal, allowed_cidrs (client networks), certificate_arn (HTTPS when set), idle_timeout (>= the router's first_byte_s), deletion_protection, access_logs_bucket."
  type = object({
    subnet_ids          = list(string)
    internal            = optional(bool, false)
    allowed_cidrs       = list(string)
    certificate_arn     = optional(string)
    ssl_policy          = optional(string, "ELBSecurityPolicy-TLS13-1-2-2021-06")
    idle_timeout        = optional(number, 900)
    deletion_protection = optional(bool, false)
    access_logs_bucket  = optional(string)
  })

  validation {
    condition     = length(var.load_balancer.subnet_ids) >= 2
    error_message = "load_balancer.subnet_ids must list subnets in at least 2 Availability Zones."
  }

  validation {
    condition     = can(regex("^ELBSecurityPolicy-(TLS13-1-[23]-|TLS-1-2-|FS-1-2-)", var.load_balancer.ssl_policy))
    error_message = "load_balancer.ssl_policy must be a TLS 1.2+ policy (ELBSecurityPolicy-TLS13-1-2-..., -TLS-1-2-..., -FS-1-2-...)."
  }

  validation {
    condition     = length(var.load_balancer.allowed_cidrs) >= 1 && alltrue([for c in var.load_balancer.allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "load_balancer.allowed_cidrs must list at least one CIDR block."
  }
}

variable "router_count" {
  description = "Number of router instances (each a one-instance Auto Scaling group with a fixed network interface)."
  type        = number
  default     = 2
}

variable "instance_type" {
  description = "On-demand instance type of the routers (CPU only)."
  type        = string
  default     = "c7i.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type such as c7i.large."
  }
}

variable "ami_id" {
  description = "Explicit AMI id; null uses ami_ssm_parameter."
  type        = string
  default     = null
}

variable "ami_ssm_parameter" {
  description = "SSM parameter with the router AMI (Amazon Linux 2023 by default)."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "root_volume_size_gib" {
  description = "Root volume size of the routers (encrypted gp3)."
  type        = number
  default     = 20
}

variable "kms_key_arn" {
  description = "KMS key for the router volumes and the node token parameter; null uses the AWS managed keys."
  type        = string
  default     = null
}

variable "port" {
  description = "Port the routers listen on."
  type        = number
  default     = 8080
}

variable "spotrelay_pip_spec" {
  description = "pip requirement or wheel URL for spotrelay."
  type        = string
  default     = "spotrelay==0.1.0"
}

variable "settings" {
  description = "router.yaml settings: ttl_s, no_capacity_wait_s, first_byte_s, stream_idle_s, max_attempts, resume_enabled, worker_connections; allowed_networks defaults to the VPC CIDR."
  type = object({
    allowed_networks   = optional(list(string))
    ttl_s              = optional(number, 15)
    no_capacity_wait_s = optional(number, 30)
    first_byte_s       = optional(number, 600)
    stream_idle_s      = optional(number, 60)
    max_attempts       = optional(number, 3)
    resume_enabled     = optional(bool, true)
    worker_connections = optional(number, 4000)
  })
  default = {}
}

variable "node_token_length" {
  description = "Length of the generated node token."
  type        = number
  default     = 48

  validation {
    condition     = var.node_token_length >= 32
    error_message = "node_token_length must be at least 32."
  }
}

variable "target_deregistration_delay" {
  description = "Seconds the load balancer keeps streams to a deregistering router open."
  type        = number
  default     = 300
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore (Session Manager instead of SSH)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
