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
  description = "Egress allow-list by key (description, ip_protocol, from_port, to_port, exactly one of cidr_ipv4 or prefix_list_id), validated by the caller's own input."
  type = map(object({
    description    = string
    ip_protocol    = optional(string, "tcp")
    from_port      = number
    to_port        = number
    cidr_ipv4      = optional(string)
    prefix_list_id = optional(string)
  }))
  default = {}
}

variable "tags" {
  description = "Tags of the group (with its Name) and of its rules."
  type        = map(string)
  default     = {}
}
