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

variable "sns_topic_arn" {
  description = "SNS topic every alarm notifies when it fires and when it recovers; null: alarms without actions."
  type        = string
  default     = null
}

variable "region" {
  description = "Region of the dashboard's metrics."
  type        = string
}

variable "dashboard_enabled" {
  description = "Create the dashboard (known at plan, unlike its body)."
  type        = bool
}

variable "dashboard_name" {
  description = "Name of the dashboard."
  type        = string
}

variable "dashboard_widgets" {
  description = "The dashboard's graphs, in order: title, stat and metrics (CloudWatch metric arrays: namespace, metric name, then dimension name and value pairs)."
  type = list(object({
    title   = string
    stat    = string
    metrics = list(list(string))
  }))
  default = []
}

variable "tags" {
  description = "Tags of the alarms."
  type        = map(string)
  default     = {}
}
