variable "security_group_id" {
  description = "The security group the rules open."
  type        = string
}

variable "cidrs" {
  description = "The CIDR blocks admitted, validated by the caller's own input."
  type        = list(string)
}

variable "port" {
  description = "The TCP port they may reach."
  type        = number
}

variable "description" {
  description = "Each rule's description, with %s where its CIDR block goes (EC2 takes a-z A-Z 0-9 space and ._-:/()#,@[]+=&;{}!$* only)."
  type        = string
}

variable "tags" {
  description = "Tags of the rules."
  type        = map(string)
  default     = {}
}
