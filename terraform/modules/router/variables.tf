variable "name" {
  description = "Name of the router deployment; prefixes every resource."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the routers, the load balancers and the registry."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets in at least 2 Availability Zones: the router group, the internal heartbeat load balancer and the registry's cache nodes."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must list at least 2 subnet ids (2 Availability Zones)."
  }
}

variable "load_balancer" {
  description = "The public (client) Application Load Balancer: subnet_ids (>= 2 AZs; public ones when internet-facing), internal (default true), allowed_cidrs (client networks), certificate_arn (HTTPS; required when internet-facing), ssl_policy, idle_timeout (> the router's first_byte_s), deletion_protection, access_logs_bucket."
  type = object({
    subnet_ids          = list(string)
    internal            = optional(bool, true)
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
    condition     = var.load_balancer.internal || var.load_balancer.certificate_arn != null
    error_message = "load_balancer.certificate_arn is required when the load balancer is internet-facing (internal = false): no plain HTTP across the internet."
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

variable "api_keys_parameter" {
  description = "SSM SecureString parameter (name or ARN, created outside Terraform so the keys stay out of state) with the data-plane API keys, comma-separated. Required when the load balancer is internet-facing."
  type        = string
  default     = null
}

variable "heartbeat" {
  description = "The internal heartbeat endpoint (an internal ALB forwarding only /nodes*, /instances/*, /healthz, /readyz to the routers' control port): port, and allowed_cidrs for operators (spotrelay status) besides agent_security_group_ids."
  type = object({
    port          = optional(number, 8081)
    allowed_cidrs = optional(list(string), [])
  })
  default = {}

  validation {
    condition     = var.heartbeat.port >= 1 && var.heartbeat.port <= 65535
    error_message = "heartbeat.port must be between 1 and 65535."
  }

  validation {
    condition     = alltrue([for c in var.heartbeat.allowed_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "heartbeat.allowed_cidrs must be CIDR blocks inside your network (not 0.0.0.0/0)."
  }
}

variable "agent_security_group_ids" {
  description = "Security groups of the GPU nodes (the gpu-pool module's security_group_id): the only groups that reach the heartbeat endpoint, and the routers' proxy destination on node_port."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.agent_security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "agent_security_group_ids must be security group ids (sg-...)."
  }
}

variable "control_client_security_group_ids" {
  description = "Security groups that reach the internal control endpoint besides the agents, without receiving inference traffic: the gpu-pool module's controller_security_group_ids (the capacity controller drains nodes through it)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.control_client_security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "control_client_security_group_ids must be security group ids (sg-...)."
  }
}

variable "node_port" {
  description = "Port of the inference engine (vLLM) on the GPU nodes, which the routers proxy to."
  type        = number
  default     = 8000
}

variable "monitoring_cidrs" {
  description = "CIDRs inside the VPC allowed to scrape /metrics on each router's control port directly (Prometheus); /metrics is never forwarded by a load balancer."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.monitoring_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "monitoring_cidrs must be CIDR blocks inside the VPC (not 0.0.0.0/0)."
  }
}

variable "egress_rules" {
  description = "Egress allow-list of the routers besides the module's own rules (to the GPU nodes on node_port, to the registry): map of description, ip_protocol, from_port, to_port and cidr_ipv4 or prefix_list_id. Default: HTTPS for PyPI and the AWS APIs."
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
      description = "HTTPS: PyPI (spotrelay install), the Amazon Linux repositories, and the SSM API for secrets"
      from_port   = 443
      to_port     = 443
      cidr_ipv4   = "0.0.0.0/0"
    }
  }
}

variable "registry" {
  description = "The shared node registry, an ElastiCache Valkey replication group: engine_version, node_type, num_cache_clusters (2-6: a primary and replicas in other AZs, automatic failover), port, auth_token_version (bump to rotate the AUTH token), maintenance_window."
  type = object({
    engine_version     = optional(string, "8.0")
    node_type          = optional(string, "cache.t4g.small")
    num_cache_clusters = optional(number, 2)
    port               = optional(number, 6379)
    auth_token_version = optional(number, 1)
    maintenance_window = optional(string, "sun:05:00-sun:06:00")
  })
  default = {}

  validation {
    condition     = var.registry.num_cache_clusters >= 2 && var.registry.num_cache_clusters <= 6
    error_message = "registry.num_cache_clusters must be between 2 and 6: the registry fails over to a replica in another Availability Zone."
  }

  validation {
    condition     = var.registry.auth_token_version >= 1 && floor(var.registry.auth_token_version) == var.registry.auth_token_version
    error_message = "registry.auth_token_version must be a whole number >= 1."
  }
}

variable "node_token_version" {
  description = "Version of the node token; bump it to generate and store a new token (then refresh routers and nodes)."
  type        = number
  default     = 1

  validation {
    condition     = var.node_token_version >= 1 && floor(var.node_token_version) == var.node_token_version
    error_message = "node_token_version must be a whole number >= 1."
  }
}

variable "router_count" {
  description = "Number of routers in the one multi-AZ Auto Scaling group. Changing it touches neither the GPU nodes nor their user data."
  type        = number
  default     = 2
}

variable "refresh" {
  description = "Rolling instance refresh of the routers: min_healthy_percentage (>= 50), max_healthy_percentage, instance_warmup_s."
  type = object({
    min_healthy_percentage = optional(number, 100)
    max_healthy_percentage = optional(number, 200)
    instance_warmup_s      = optional(number, 180)
  })
  default = {}
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
  description = "KMS key for the router volumes, the SSM parameters and the registry at rest; null uses the AWS managed keys."
  type        = string
  default     = null
}

variable "port" {
  description = "Data-plane port of the routers (behind the public load balancer)."
  type        = number
  default     = 8080
}

variable "control_port" {
  description = "Control-plane port of the routers (/nodes, /metrics; behind the heartbeat endpoint and for monitoring_cidrs)."
  type        = number
  default     = 8081
}

variable "spotrelay_pip_spec" {
  description = "The spotrelay package: s3://bucket/key.whl as `spotrelay up` uploads it (the role may read that object only), a pip requirement (spotrelay==X), a bare version, or a wheel URL; the router extra is added."
  type        = string
}

variable "spotrelay_sha256" {
  description = "sha256 of the spotrelay package file, checked on every router before install."
  type        = string
}

variable "settings" {
  description = "router.yaml settings: ttl_s, no_capacity_wait_s, first_byte_s, stream_idle_s, max_attempts, resume_enabled, worker_connections; allowed_networks defaults to the VPC CIDR, trusted_proxies to the CIDRs of the load balancers' subnets (their X-Forwarded-For names the client the per-address cap counts), connection_cap_exempt to none (never the whole VPC)."
  type = object({
    allowed_networks      = optional(list(string))
    trusted_proxies       = optional(list(string))
    connection_cap_exempt = optional(list(string))
    ttl_s                 = optional(number, 6)
    no_capacity_wait_s    = optional(number, 30)
    first_byte_s          = optional(number, 600)
    stream_idle_s         = optional(number, 60)
    max_attempts          = optional(number, 3)
    resume_enabled        = optional(bool, true)
    worker_connections    = optional(number, 4000)
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
