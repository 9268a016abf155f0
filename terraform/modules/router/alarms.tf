# CloudWatch alarms and a dashboard for the routers (alarms_enabled). What
# exists and on which thresholds is decided in ./modules/alarms (tested
# offline); docs/runbook.md has an entry per alarm.

module "alarms" {
  source = "./modules/alarms"

  name          = var.name
  region        = local.region
  enabled       = var.alarms_enabled
  sns_topic_arn = var.alarm_sns_topic_arn
  load_balancers = {
    public_lb           = aws_lb.this.arn_suffix
    public_target_group = aws_lb_target_group.router.arn_suffix
    heartbeat_lb        = aws_lb.heartbeat.arn_suffix
    heartbeat_group     = aws_lb_target_group.heartbeat.arn_suffix
  }
}

resource "aws_cloudwatch_metric_alarm" "router" {
  for_each = module.alarms.alarms

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
  alarm_actions       = module.alarms.actions
  ok_actions          = module.alarms.actions
  tags                = local.tags
}

resource "aws_cloudwatch_dashboard" "router" {
  count = var.alarms_enabled ? 1 : 0

  dashboard_name = "${var.name}-routers"
  dashboard_body = module.alarms.dashboard_body
}
