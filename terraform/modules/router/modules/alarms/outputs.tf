output "alarms" {
  description = "Alarms by short name: description, namespace, metric_name, dimensions, statistic, period, evaluation_periods, threshold, comparison_operator, treat_missing_data."
  value       = local.alarms
}

output "actions" {
  description = "Alarm and OK actions: the SNS topic, or none."
  value       = local.actions
}

output "dashboard_body" {
  description = "The CloudWatch dashboard's JSON (null when disabled)."
  value       = var.enabled ? jsonencode(local.dashboard) : null
}
