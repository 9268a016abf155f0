variable "name" {
  description = "The group's Name tag."
  type        = string
}

variable "name_prefix" {
  description = "Name prefix of the group (EC2 appends a unique suffix); null: the Name tag and a hyphen."
  type        = string
  default     = null
}

variable "description" {
  description = "Description of the group (EC2 takes a-z A-Z 0-9 space and ._-:/()#,@[]+=&;{}!$* only)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the group."
  type        = string
}

variable "egress_rules" {
  description = "Egress allow-list by key: description (what it is for), ip_protocol (tcp or udp: no all-protocol rule), from_port, to_port, and exactly one of cidr_ipv4 or prefix_list_id. Checked here for every caller (the GPU nodes', the controller's and the routers' lists)."
  type = map(object({
    description    = string
    ip_protocol    = optional(string, "tcp")
    from_port      = number
    to_port        = number
    cidr_ipv4      = optional(string)
    prefix_list_id = optional(string)
  }))
  default = {}

  validation {
    condition     = alltrue([for r in values(var.egress_rules) : contains(["tcp", "udp"], r.ip_protocol)])
    error_message = "egress_rules: ip_protocol must be tcp or udp (no all-protocol rules)."
  }

  validation {
    condition     = alltrue([for r in values(var.egress_rules) : r.from_port >= 1 && r.to_port <= 65535 && r.from_port <= r.to_port])
    error_message = "egress_rules: ports must satisfy 1 <= from_port <= to_port <= 65535."
  }

  validation {
    condition     = alltrue([for r in values(var.egress_rules) : (r.cidr_ipv4 == null) != (r.prefix_list_id == null)])
    error_message = "egress_rules: each rule needs exactly one of cidr_ipv4 or prefix_list_id."
  }

  validation {
    condition     = alltrue([for r in values(var.egress_rules) : r.cidr_ipv4 == null || can(cidrhost(coalesce(r.cidr_ipv4, "0.0.0.0/0"), 0))])
    error_message = "egress_rules: cidr_ipv4 must be a CIDR block."
  }

  validation {
    condition     = alltrue([for r in values(var.egress_rules) : length(trimspace(r.description)) >= 10])
    error_message = "egress_rules: every rule needs a description saying what it is for."
  }

  validation {
    condition     = alltrue([for r in values(var.egress_rules) : can(regex("^[A-Za-z0-9 ._:/()#,@+=&;{}!$*\\[\\]-]+$", r.description))])
    error_message = "egress_rules: descriptions may use letters, digits, spaces and ._-:/()#,@[]+=&;{}!$* only (the EC2 API refuses others, e.g. apostrophes)."
  }
}

variable "tags" {
  description = "Tags of the group (with its Name) and of its rules."
  type        = map(string)
  default     = {}
}
