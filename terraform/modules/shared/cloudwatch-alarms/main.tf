# CloudWatch alarms and a dashboard created from data: the callers' alarms
# submodules decide, offline, which alarms exist on which thresholds and lay
# out the dashboard; this creates them the same way for the GPU pool and the
# routers. Single-metric alarms only (metric math stays with its caller).

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each = var.alarms

  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric_name
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  period              = each.value.period
  evaluation_periods  = each.value.evaluation_periods
  threshold           = each.value.threshold
  comparison_operator = each.value.comparison_operator
  treat_missing_data  = each.value.treat_missing_data
  alarm_actions       = var.actions
  ok_actions          = var.actions
  tags                = var.tags
}

resource "aws_cloudwatch_dashboard" "this" {
  count = var.dashboard_enabled ? 1 : 0

  dashboard_name = var.dashboard_name
  dashboard_body = var.dashboard_body
}
