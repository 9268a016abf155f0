# CloudWatch alarms and a dashboard created from data: the callers' alarms
# submodules decide, offline, which alarms exist on which thresholds and
# which graphs the dashboard shows; this notifies the same way and lays the
# dashboard out the same way for the GPU pool and the routers. Single-metric
# alarms only (metric math stays with its caller, which uses `actions`).

locals {
  actions = var.sns_topic_arn == null ? [] : [var.sns_topic_arn]

  # Two graphs a row, 12 x 6 each, in the order given.
  dashboard = {
    widgets = [
      for i, w in var.dashboard_widgets : {
        type   = "metric"
        x      = (i % 2) * 12
        y      = floor(i / 2) * 6
        width  = 12
        height = 6
        properties = {
          title   = w.title
          region  = var.region
          view    = "timeSeries"
          stat    = w.stat
          period  = 60
          metrics = w.metrics
        }
      }
    ]
  }
}

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
  alarm_actions       = local.actions
  ok_actions          = local.actions
  tags                = var.tags
}

resource "aws_cloudwatch_dashboard" "this" {
  count = var.dashboard_enabled ? 1 : 0

  dashboard_name = var.dashboard_name
  dashboard_body = jsonencode(local.dashboard)
}
