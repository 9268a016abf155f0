variable "name" {
  description = "Name of the router deployment; prefixes every resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}[a-z0-9]$", var.name)) && !strcontains(var.name, "--")
    error_message = "name must be 2-32 characters of lowercase letters, digits and single hyphens, starting with a letter (ElastiCache ids refuse double hyphens)."
  }
}

variable "region" {
  description = "AWS region (the boot script calls SSM there)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. us-east-1."
  }
}

variable "router_count" {
  description = "Number of router instances in the one multi-AZ Auto Scaling group. Agents never see it: they heartbeat the internal endpoint."
  type        = number
  default     = 2

  validation {
    condition     = var.router_count >= 1 && var.router_count <= 20 && floor(var.router_count) == var.router_count
    error_message = "router_count must be a whole number between 1 and 20."
  }
}

variable "subnet_count" {
  description = "Number of subnets (Availability Zones) the router group spans."
  type        = number

  validation {
    condition     = var.subnet_count >= 2
    error_message = "Routers need subnets in at least 2 Availability Zones."
  }
}

variable "port" {
  description = "Port of the router's data plane (the OpenAI API, /healthz, /readyz)."
  type        = number
  default     = 8080

  validation {
    condition     = var.port >= 1024 && var.port <= 65535
    error_message = "port must be between 1024 and 65535."
  }
}

variable "control_port" {
  description = "Port of the router's control listener (/nodes, /metrics, /healthz, /readyz): heartbeats never queue behind data-plane clients, and the data port serves no control path."
  type        = number
  default     = 8081

  validation {
    condition     = var.control_port >= 1024 && var.control_port <= 65535 && var.control_port != var.port
    error_message = "control_port must be between 1024 and 65535 and differ from port."
  }
}

variable "redis" {
  description = "The shared registry: endpoint (ElastiCache primary endpoint host), port, and whether an auth token is fetched from SSM into the router."
  type = object({
    endpoint = string
    port     = optional(number, 6379)
  })

  validation {
    condition     = can(regex("^[A-Za-z0-9.-]+$", var.redis.endpoint))
    error_message = "redis.endpoint must be a host name."
  }

  validation {
    condition     = var.redis.port >= 1 && var.redis.port <= 65535
    error_message = "redis.port must be between 1 and 65535."
  }
}

variable "api_keys_parameter" {
  description = "SSM SecureString parameter (name or ARN) holding the data-plane API keys, comma-separated; null leaves the data plane without client auth (internal load balancers only)."
  type        = string
  default     = null

  validation {
    condition     = var.api_keys_parameter == null || can(regex("^(/[A-Za-z0-9_.\\-/]+|arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_.\\-/]+)$", coalesce(var.api_keys_parameter, "/x")))
    error_message = "api_keys_parameter must be an SSM parameter name starting with / or a parameter ARN."
  }
}

variable "internet_facing" {
  description = "Whether the public load balancer is internet-facing (then an API key parameter is required)."
  type        = bool
  default     = false
}

variable "spotrelay_pip_spec" {
  description = "The spotrelay package on the routers: s3://bucket/key.whl (as `spotrelay up` uploads it), a pip requirement (spotrelay==X), a bare version, or a wheel URL. The router extra is added; checked by ../../../shared/package."
  type        = string
}

variable "spotrelay_sha256" {
  description = "sha256 of the spotrelay package file; the boot script checks it before pip sees the file (its form is checked by ../../../shared/package)."
  type        = string
}

variable "settings" {
  description = "router.yaml settings (keys of spotrelay.router.settings.RouterConfig). allowed_networks are the CIDRs node URLs must be in (normally the VPC CIDR); trusted_proxies the load balancers' subnets (their X-Forwarded-For names the client the per-address connection cap counts); connection_cap_exempt addresses without any cap (normally none)."
  type = object({
    allowed_networks      = list(string)
    trusted_proxies       = optional(list(string), [])
    connection_cap_exempt = optional(list(string), [])
    ttl_s                 = optional(number, 6)
    no_capacity_wait_s    = optional(number, 30)
    first_byte_s          = optional(number, 600)
    stream_idle_s         = optional(number, 60)
    max_attempts          = optional(number, 3)
    resume_enabled        = optional(bool, true)
    worker_connections    = optional(number, 4000)
  })

  validation {
    condition     = length(var.settings.allowed_networks) >= 1 && alltrue([for c in var.settings.allowed_networks : can(cidrhost(c, 0))])
    error_message = "settings.allowed_networks must list at least one CIDR block."
  }

  validation {
    condition     = alltrue([for c in var.settings.connection_cap_exempt : can(cidrhost(c, 0))])
    error_message = "settings.connection_cap_exempt must list CIDR blocks."
  }

  validation {
    condition     = alltrue([for c in var.settings.trusted_proxies : can(cidrhost(c, 0)) && !endswith(c, "/0")])
    error_message = "settings.trusted_proxies must list CIDR blocks (the load balancers' subnets, never /0)."
  }

  validation {
    condition     = var.settings.ttl_s >= 5 && var.settings.ttl_s <= 120
    error_message = "settings.ttl_s must be between 5 and 120 seconds."
  }

  validation {
    condition     = var.settings.max_attempts >= 1 && var.settings.max_attempts <= 10
    error_message = "settings.max_attempts must be between 1 and 10."
  }

  validation {
    condition     = var.settings.first_byte_s > 0 && var.settings.stream_idle_s > 0
    error_message = "settings.first_byte_s and settings.stream_idle_s must be positive."
  }
}

variable "refresh" {
  description = "Rolling instance refresh of the router group: min_healthy_percentage (>= 50: at least half the routers stay in service) and max_healthy_percentage (above 100 launches replacements first)."
  type = object({
    min_healthy_percentage = optional(number, 100)
    max_healthy_percentage = optional(number, 200)
    instance_warmup_s      = optional(number, 180)
  })
  default = {}

  validation {
    condition     = var.refresh.min_healthy_percentage >= 50 && var.refresh.min_healthy_percentage <= 100
    error_message = "refresh.min_healthy_percentage must be between 50 and 100: a refresh keeps at least half the routers healthy."
  }

  validation {
    condition = (
      var.refresh.max_healthy_percentage >= 100 && var.refresh.max_healthy_percentage <= 200 &&
      var.refresh.max_healthy_percentage - var.refresh.min_healthy_percentage <= 100 &&
      var.refresh.max_healthy_percentage > var.refresh.min_healthy_percentage
    )
    error_message = "refresh.max_healthy_percentage must be 100-200, above min_healthy_percentage and at most 100 points over it (Auto Scaling limits)."
  }
}

variable "load_balancer_idle_timeout" {
  description = "Idle timeout of the public load balancer in seconds; must cover the router's first_byte_s (long prefills) and stream gaps."
  type        = number
  default     = 900

  validation {
    condition     = var.load_balancer_idle_timeout >= 60 && var.load_balancer_idle_timeout <= 4000
    error_message = "load_balancer_idle_timeout must be between 60 and 4000 seconds (the ALB limits)."
  }
}

variable "vpc_cidrs" {
  description = "The VPC's CIDR blocks (every association), which monitoring_cidrs must lie in."
  type        = list(string)
  default     = []
}

variable "monitoring_cidrs" {
  description = "Networks of the Prometheus servers that scrape the routers' /metrics on the control port; each must lie inside one of vpc_cidrs (checked by the monitoring_cidrs output)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.tags) : !startswith(lower(k), "aws:")])
    error_message = "tags must not use the reserved aws: prefix."
  }
}
