output "alarms" {
  description = "Single-metric alarms by short name: description, namespace, metric_name, dimensions, statistic, period, evaluation_periods, threshold, comparison_operator, treat_missing_data."
  value       = local.simple
}

output "in_service_alarm" {
  description = "The in-service-below-desired metric-math alarm (null when disabled): name, description, minutes, expression, metrics."
  value       = local.in_service
}

output "dashboard_widgets" {
  description = "The dashboard's graphs (title, stat, metrics), those with metrics only; empty when disabled."
  value       = var.enabled ? [for w in local.widgets : { title = w.title, stat = "Maximum", metrics = w.metrics } if length(w.metrics) > 0] : []
}
