variable "name" {
  description = "Name of the router deployment; prefixes every resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}[a-z0-9]$", var.name))
    error_message = "name must be 2-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region (the boot scripts call SSM and EC2 there)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. us-east-1."
  }
}

variable "router_count" {
  description = "Number of router instances. Each is its own one-instance Auto Scaling group with a fixed network interface, so agents can heartbeat every router by address."
  type        = number
  default     = 2

  validation {
    condition     = var.router_count >= 1 && var.router_count <= 8 && floor(var.router_count) == var.router_count
    error_message = "router_count must be a whole number between 1 and 8."
  }
}

variable "subnet_count" {
  description = "Number of subnets (Availability Zones) the routers are spread over, round-robin."
  type        = number

  validation {
    condition     = var.subnet_count >= 2
    error_message = "Routers need subnets in at least 2 Availability Zones."
  }
}

variable "network_interface_ids" {
  description = "The fixed network interface of each router slot, in slot order (attached at boot)."
  type        = list(string)
}

variable "port" {
  description = "Port the router listens on."
  type        = number
  default     = 8080

  validation {
    condition     = var.port >= 1024 && var.port <= 65535
    error_message = "port must be between 1024 and 65535."
  }
}

variable "node_token_parameter" {
  description = "SSM SecureString parameter (name or ARN) with the node token; fetched at boot into /etc/spotrelay/node-token."
  type        = string

  validation {
    condition     = can(regex("^(/[A-Za-z0-9_.\\-/]+|arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_.\\-/]+)$", var.node_token_parameter))
    error_message = "node_token_parameter must be an SSM parameter name starting with / or a parameter ARN."
  }
}

variable "spotrelay_pip_spec" {
  description = "pip requirement or wheel URL for spotrelay on the routers."
  type        = string
  default     = "spotrelay==0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.:/,=<>!~+@%\\[\\]-]+$", var.spotrelay_pip_spec))
    error_message = "spotrelay_pip_spec must be one pip requirement or URL without spaces or quotes."
  }
}

variable "settings" {
  description = "router.yaml settings (keys of spotrelay.router.settings.RouterConfig). allowed_networks are the CIDRs node URLs must be in (normally the VPC CIDR)."
  type = object({
    allowed_networks   = list(string)
    ttl_s              = optional(number, 15)
    no_capacity_wait_s = optional(number, 30)
    first_byte_s       = optional(number, 600)
    stream_idle_s      = optional(number, 60)
    max_attempts       = optional(number, 3)
    resume_enabled     = optional(bool, true)
    worker_connections = optional(number, 4000)
  })

  validation {
    condition     = length(var.settings.allowed_networks) >= 1 && alltrue([for c in var.settings.allowed_networks : can(cidrhost(c, 0))])
    error_message = "settings.allowed_networks must list at least one CIDR block."
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

variable "load_balancer_idle_timeout" {
  description = "Idle timeout of the load balancer in seconds; must cover the router's first_byte_s (long prefills) and stream gaps."
  type        = number
  default     = 900

  validation {
    condition     = var.load_balancer_idle_timeout >= 60 && var.load_balancer_idle_timeout <= 4000
    error_message = "load_balancer_idle_timeout must be between 60 and 4000 seconds (the ALB limits)."
  }
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
