output "alarms" {
  description = "Single-metric alarms by short name: description, namespace, metric_name, dimensions, statistic, period, evaluation_periods, threshold, comparison_operator, treat_missing_data."
  value       = local.simple
}

output "in_service_alarm" {
  description = "The in-service-below-desired metric-math alarm (null when disabled): name, description, minutes, expression, metrics."
  value       = local.in_service
}

output "actions" {
  description = "Alarm and OK actions: the SNS topic, or none."
  value       = local.actions
}

output "dashboard_body" {
  description = "The CloudWatch dashboard's JSON (null when disabled)."
  value       = var.enabled ? jsonencode(local.dashboard) : null
}
