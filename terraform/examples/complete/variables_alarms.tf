variable "alarms_enabled" {
  description = "CloudWatch alarms and dashboards for the routers and the GPU pool (docs/runbook.md has an entry per alarm)."
  type        = bool
  default     = true
}

variable "alarm_sns_topic_arn" {
  description = "SNS topic the alarms notify (e.g. your on-call's); null: alarms without actions."
  type        = string
  default     = null
}
