# CloudWatch alarms and dashboard (alarms.tf).

variable "alarms_enabled" {
  description = "Create the pool's CloudWatch alarms (in service vs desired, controller errors, dead-letter queues, on-demand fallback, load) and its dashboard; enables the group's CloudWatch metrics."
  type        = bool
  default     = false
}

variable "alarm_sns_topic_arn" {
  description = "SNS topic the alarms notify when they fire and recover; null: alarms without actions."
  type        = string
  default     = null
}
