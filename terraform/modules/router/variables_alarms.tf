# CloudWatch alarms and dashboard (alarms.tf).

variable "alarms_enabled" {
  description = "Create the routers' CloudWatch alarms (5xx of the load balancer and of the routers, unhealthy routers behind both load balancers) and a dashboard."
  type        = bool
  default     = false
}

variable "alarm_sns_topic_arn" {
  description = "SNS topic the alarms notify when they fire and recover; null: alarms without actions."
  type        = string
  default     = null
}
