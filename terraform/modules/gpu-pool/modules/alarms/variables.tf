variable "name" {
  description = "Name of the GPU pool (its Auto Scaling group)."
  type        = string
}

variable "enabled" {
  description = "Create the alarms and the dashboard."
  type        = bool
  default     = false
}

variable "controller_function" {
  description = "Name of the controller Lambda function, when the pool has one."
  type        = string
  default     = null
}

variable "dlq_names" {
  description = "Dead-letter queues that must stay empty: the interruption queue's and the controller's."
  type        = list(string)
  default     = []
}

variable "fallback" {
  description = "The on-demand fallback: enabled, the configured on-demand base, the controller's metric namespace."
  type = object({
    enabled   = bool
    base      = number
    namespace = string
  })
  default = { enabled = false, base = 0, namespace = "spotrelay" }
}

variable "load" {
  description = "The agents' published load (null when they publish none): namespace, metric name and the per-node target; the alarm fires at twice the target."
  type = object({
    namespace = string
    metric    = string
    target    = number
  })
  default = null
}

variable "below_desired_minutes" {
  description = "Minutes the group may have fewer instances in service than desired before the alarm."
  type        = number
  default     = 15

  validation {
    condition     = var.below_desired_minutes >= 1 && var.below_desired_minutes <= 1440
    error_message = "below_desired_minutes must be 1-1440."
  }
}

variable "fallback_alarm_minutes" {
  description = "Minutes the controller may keep the on-demand base above the configured one before the alarm."
  type        = number
  default     = 30

  validation {
    condition     = var.fallback_alarm_minutes >= 1 && var.fallback_alarm_minutes <= 1440
    error_message = "fallback_alarm_minutes must be 1-1440."
  }
}
