variable "name_prefix" {
  description = "Name prefix of the launch template (EC2 appends a unique suffix)."
  type        = string
}

variable "description" {
  description = "Description of the launch template."
  type        = string
}

variable "ami_id" {
  description = "Explicit AMI id; null reads ami_ssm_parameter at plan time."
  type        = string
  default     = null
}

variable "ami_ssm_parameter" {
  description = "SSM parameter holding the AMI id, read at plan time when ami_id is null."
  type        = string
  default     = null
}

variable "instance_type" {
  description = "Instance type; null where the group's mixed instances policy chooses the types."
  type        = string
  default     = null
}

variable "user_data_base64" {
  description = "The cloud-init user data, base64-encoded (gzip-compressed or not)."
  type        = string
}

variable "instance_profile_arn" {
  description = "ARN of the instance profile the instances run with."
  type        = string
}

variable "security_group_ids" {
  description = "Security groups of the instances' one network interface."
  type        = list(string)
}

variable "volumes" {
  description = "EBS volumes, the root volume first: device_name, size_gib, and optional throughput (MiB/s) and iops beyond gp3's baseline. All are encrypted gp3, deleted with the instance."
  type = list(object({
    device_name = string
    size_gib    = number
    throughput  = optional(number)
    iops        = optional(number)
  }))

  validation {
    condition     = length(var.volumes) >= 1
    error_message = "volumes must list at least the root volume."
  }
}

variable "kms_key_arn" {
  description = "KMS key of the EBS volumes; null uses the account's default EBS key."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags of the launch template itself."
  type        = map(string)
  default     = {}
}

variable "instance_tags" {
  description = "Tags every instance, its volumes and its network interface get (tag_specifications)."
  type        = map(string)
  default     = {}
}
