# CloudWatch alarms and a dashboard for the pool (alarms_enabled). What exists
# and on which thresholds is decided in ./modules/alarms (tested offline);
# docs/runbook.md has an entry per alarm. The in-service alarm reads the
# group's own metrics, which main.tf enables with the alarms.

module "alarms" {
  source = "./modules/alarms"

  name                = var.name
  enabled             = var.alarms_enabled
  controller_function = local.controller_on ? module.capacity.names.function : null
  dlq_names = concat(
    module.capacity.enabled.queue ? [module.capacity.names.dlq] : [],
    local.controller_on ? [aws_sqs_queue.controller_dlq[0].name] : [],
  )
  fallback = {
    enabled   = module.capacity.enabled.fallback
    base      = var.scaling.on_demand_base_capacity
    namespace = var.scale_on_load.namespace
  }
  load = module.capacity.enabled.scaling ? {
    namespace = local.scale.namespace
    metric    = local.scale.metric_name
    target    = local.scale.target_value
  } : null
}

module "cloudwatch" {
  source = "../shared/cloudwatch-alarms"

  name              = var.name
  alarms            = module.alarms.alarms
  sns_topic_arn     = var.alarm_sns_topic_arn
  region            = local.region
  dashboard_enabled = var.alarms_enabled
  dashboard_name    = var.name
  dashboard_widgets = module.alarms.dashboard_widgets
  tags              = local.tags
}

# Metric math on the group's own metrics: made here, not by the shared module.
resource "aws_cloudwatch_metric_alarm" "in_service_below_desired" {
  count = var.alarms_enabled ? 1 : 0

  alarm_name          = module.alarms.in_service_alarm.name
  alarm_description   = module.alarms.in_service_alarm.description
  evaluation_periods  = module.alarms.in_service_alarm.minutes
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = module.cloudwatch.actions
  ok_actions          = module.cloudwatch.actions
  tags                = local.tags

  metric_query {
    id          = "missing"
    expression  = module.alarms.in_service_alarm.expression
    label       = "instances missing"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = module.alarms.in_service_alarm.metrics
    content {
      id = metric_query.key
      metric {
        namespace   = "AWS/AutoScaling"
        metric_name = metric_query.value.metric_name
        dimensions  = { AutoScalingGroupName = aws_autoscaling_group.node.name }
        stat        = metric_query.value.statistic
        period      = 60
      }
    }
  }
}
