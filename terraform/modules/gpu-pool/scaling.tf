# Scaling on load (scale_on_load.enabled). Agents publish QueuePerNode and
# KvCacheUsage (dimension Pool) once per interval; CloudWatch's Average over
# the pool is the load per node.
#
# - Scale out: target tracking with scale-in disabled. The instance warm-up
#   (minutes: install + model load) keeps nodes that are still starting out of
#   the metric, so one burst does not launch a node per minute of cold start.
# - Scale in: a simple policy, one node at a time, with a cooldown, on an alarm
#   that has stayed well below the target for many minutes. The removed node
#   goes through the group's termination hook: its agent drains it like a spot
#   notice (and the interruption queue hears the lifecycle action as well).

locals {
  scale = module.capacity.scaling
}

resource "aws_iam_role_policy" "node_metrics" {
  count = module.capacity.enabled.scaling ? 1 : 0

  name_prefix = "spotrelay-load-metrics-"
  role        = module.instance_role.role_id
  policy      = module.capacity.node_metrics_policy
}

resource "aws_autoscaling_policy" "scale_out" {
  count = module.capacity.enabled.scaling ? 1 : 0

  name                      = "${var.name}-scale-out-on-load"
  autoscaling_group_name    = aws_autoscaling_group.node.name
  policy_type               = "TargetTrackingScaling"
  estimated_instance_warmup = local.scale.scale_out_warmup_s

  target_tracking_configuration {
    target_value     = local.scale.target_value
    disable_scale_in = true

    customized_metric_specification {
      namespace   = local.scale.namespace
      metric_name = local.scale.metric_name
      statistic   = "Average"

      metric_dimension {
        name  = "Pool"
        value = var.name
      }
    }
  }
}

resource "aws_autoscaling_policy" "scale_in" {
  count = module.capacity.enabled.scaling ? 1 : 0

  name                   = "${var.name}-scale-in-on-load"
  autoscaling_group_name = aws_autoscaling_group.node.name
  policy_type            = "SimpleScaling"
  adjustment_type        = "ChangeInCapacity"
  scaling_adjustment     = -1
  cooldown               = local.scale.scale_in_cooldown_s
}

resource "aws_cloudwatch_metric_alarm" "scale_in" {
  count = module.capacity.enabled.scaling ? 1 : 0

  alarm_name          = "${var.name}-load-low"
  alarm_description   = "${local.scale.metric_name} below ${local.scale.scale_in_threshold} per node for ${local.scale.scale_in_after_minutes} min: remove one node (drained through the termination hook)."
  namespace           = local.scale.namespace
  metric_name         = local.scale.metric_name
  dimensions          = { Pool = var.name }
  statistic           = "Average"
  period              = 60
  evaluation_periods  = local.scale.scale_in_after_minutes
  comparison_operator = "LessThanThreshold"
  threshold           = local.scale.scale_in_threshold
  treat_missing_data  = "notBreaching" # no datapoints (no node serving) never shrinks the pool
  alarm_actions       = [aws_autoscaling_policy.scale_in[0].arn]
  tags                = local.tags
}
