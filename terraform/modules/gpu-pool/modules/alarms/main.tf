# The GPU pool's CloudWatch alarms and dashboard graphs as data; the parent creates
# them with ../../../shared/cloudwatch-alarms (the SNS actions, the dashboard
# layout). Every alarm names its runbook entry (docs/runbook.md) in its
# description.

locals {
  runbook = "docs/runbook.md#"

  controller = var.enabled && var.controller_function != null
  fallback   = var.enabled && var.fallback.enabled && var.controller_function != null
  load       = var.enabled && var.load != null

  simple = merge(
    local.controller ? {
      controller-errors = {
        description         = "The capacity controller Lambda failed runs (fallback decisions or interruption events not handled). ${local.runbook}spot-runs-dry-the-on-demand-fallback"
        namespace           = "AWS/Lambda"
        metric_name         = "Errors"
        dimensions          = { FunctionName = var.controller_function }
        statistic           = "Sum"
        period              = 300
        evaluation_periods  = 1
        threshold           = 0
        comparison_operator = "GreaterThanThreshold"
        treat_missing_data  = "notBreaching"
      }
    } : {},
    var.enabled ? {
      for q in var.dlq_names : "${q}-not-empty" => {
        description         = "Messages in ${q}: events the controller could not handle. ${local.runbook}spotrelayinterruptiondlqnotempty"
        namespace           = "AWS/SQS"
        metric_name         = "ApproximateNumberOfMessagesVisible"
        dimensions          = { QueueName = q }
        statistic           = "Maximum"
        period              = 300
        evaluation_periods  = 1
        threshold           = 0
        comparison_operator = "GreaterThanThreshold"
        treat_missing_data  = "notBreaching"
      }
    } : {},
    local.fallback ? {
      on-demand-fallback = {
        description         = "The controller has kept the on-demand base above ${var.fallback.base} for ${var.fallback_alarm_minutes} min: spot is short, on-demand stands in. ${local.runbook}spotrelayondemandfallbackactive"
        namespace           = var.fallback.namespace
        metric_name         = "OnDemandBaseCapacity"
        dimensions          = { Pool = var.name }
        statistic           = "Minimum"
        period              = 60
        evaluation_periods  = var.fallback_alarm_minutes
        threshold           = var.fallback.base
        comparison_operator = "GreaterThanThreshold"
        treat_missing_data  = "notBreaching"
      }
    } : {},
    local.load ? {
      load-high = {
        description         = "The agents' ${var.load.metric} per node has stayed above twice the scaling target (${var.load.target * 2}) for 15 min: scaling cannot keep up (max_size, capacity). ${local.runbook}spotrelayreadynodesbelowdesired"
        namespace           = var.load.namespace
        metric_name         = var.load.metric
        dimensions          = { Pool = var.name }
        statistic           = "Average"
        period              = 60
        evaluation_periods  = 15
        threshold           = var.load.target * 2
        comparison_operator = "GreaterThanThreshold"
        treat_missing_data  = "notBreaching"
      }
    } : {},
  )

  # In service below desired: metric math on the group's own metrics (the
  # parent turns them on with enabled_metrics).
  in_service = var.enabled ? {
    name        = "${var.name}-in-service-below-desired"
    description = "Fewer instances in service than desired for ${var.below_desired_minutes} min: launches fail or nodes never pass the readiness gate. ${local.runbook}spotrelayreadynodesbelowdesired"
    minutes     = var.below_desired_minutes
    expression  = "desired - in_service"
    metrics = {
      desired    = { metric_name = "GroupDesiredCapacity", statistic = "Maximum" }
      in_service = { metric_name = "GroupInServiceInstances", statistic = "Minimum" }
    }
  } : null

  widgets = [
    { title = "Instances: in service vs desired", metrics = [
      ["AWS/AutoScaling", "GroupDesiredCapacity", "AutoScalingGroupName", var.name],
      ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", var.name],
      ["AWS/AutoScaling", "GroupPendingInstances", "AutoScalingGroupName", var.name],
    ] },
    { title = "Agents' published load per node", metrics = var.load == null ? [] : [
      [var.load.namespace, "QueuePerNode", "Pool", var.name],
      [var.load.namespace, "KvCacheUsage", "Pool", var.name],
    ] },
    { title = "On-demand fallback", metrics = var.fallback.enabled ? [
      [var.fallback.namespace, "OnDemandBaseCapacity", "Pool", var.name],
      [var.fallback.namespace, "ReadyNodes", "Pool", var.name],
      [var.fallback.namespace, "FailedRecoveryProbes", "Pool", var.name],
    ] : [] },
    { title = "Controller errors and dead-letter queues", metrics = concat(
      var.controller_function == null ? [] : [["AWS/Lambda", "Errors", "FunctionName", var.controller_function]],
      [for q in var.dlq_names : ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q]],
    ) },
  ]
}
