variable "name" {
  description = "Prefix of the alarm names: <name>-<key>."
  type        = string
}

variable "alarms" {
  description = "Single-metric alarms by key: description, namespace, metric_name, dimensions, statistic, period, evaluation_periods, threshold, comparison_operator, treat_missing_data."
  type = map(object({
    description         = string
    namespace           = string
    metric_name         = string
    dimensions          = map(string)
    statistic           = string
    period              = number
    evaluation_periods  = number
    threshold           = number
    comparison_operator = string
    treat_missing_data  = string
  }))
}

variable "actions" {
  description = "What every alarm notifies when it fires and when it recovers (an SNS topic, or none)."
  type        = list(string)
  default     = []
}

variable "dashboard_enabled" {
  description = "Create the dashboard (known at plan, unlike its body)."
  type        = bool
}

variable "dashboard_name" {
  description = "Name of the dashboard."
  type        = string
}

variable "dashboard_body" {
  description = "The dashboard's JSON."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags of the alarms."
  type        = map(string)
  default     = {}
}
