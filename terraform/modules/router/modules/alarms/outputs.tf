output "alarms" {
  description = "Alarms by short name: description, namespace, metric_name, dimensions, statistic, period, evaluation_periods, threshold, comparison_operator, treat_missing_data."
  value       = local.alarms
}

output "dashboard_widgets" {
  description = "The dashboard's graphs (title, stat, metrics); empty when disabled."
  value       = var.enabled ? local.widgets : []
}
