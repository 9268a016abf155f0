output "alarms" {
  description = "The alarms by key, with every attribute, for the callers' plan-level tests."
  value       = aws_cloudwatch_metric_alarm.this
}

output "actions" {
  description = "Alarm and OK actions: the SNS topic, or none (for the callers' own alarms)."
  value       = local.actions
}

output "dashboard" {
  description = "The dashboard with every attribute, or null when it is off."
  value       = one(aws_cloudwatch_dashboard.this)
}
