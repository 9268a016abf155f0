# Pure logic of the pool's capacity pieces: names and ARNs, the EventBridge
# event patterns, the IAM and queue policy documents, the controller's
# environment and the scaling settings. ../../scaling.tf, fallback.tf and
# interruption_queue.tf turn them into resources; tests/ checks them offline.

locals {
  fallback_on = var.on_demand_fallback.enabled
  queue_on    = var.interruption_queue.enabled
  # One Lambda function serves both: the schedule runs the fallback, the queue's
  # event source mapping delivers interruption events.
  controller_on = local.fallback_on || local.queue_on
  scaling_on    = var.scale_on_load.enabled

  arn_prefix = "arn:${var.partition}"
  asg_arn    = "${local.arn_prefix}:autoscaling:${var.region}:${var.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.name}"

  function_name  = "${var.name}-controller"
  log_group_name = "/aws/lambda/${local.function_name}"
  log_group_arn  = "${local.arn_prefix}:logs:${var.region}:${var.account_id}:log-group:${local.log_group_name}"
  queue_name     = "${var.name}-interruptions"
  dlq_name       = "${var.name}-interruptions-dlq"
  queue_arn      = "${local.arn_prefix}:sqs:${var.region}:${var.account_id}:${local.queue_name}"
  dns_suffix     = var.partition == "aws-cn" ? "amazonaws.com.cn" : "amazonaws.com"
  queue_url      = "https://sqs.${var.region}.${local.dns_suffix}/${var.account_id}/${local.queue_name}"

  # --- EventBridge: the events of the termination handler's queue mode.
  # EC2 and AWS Health events cannot be filtered by Auto Scaling group; the
  # controller drops instances no router knows. The lifecycle action is
  # filtered to this group.
  event_patterns = {
    spot-interruption = {
      source        = ["aws.ec2"]
      "detail-type" = ["EC2 Spot Instance Interruption Warning"]
    }
    rebalance = {
      source        = ["aws.ec2"]
      "detail-type" = ["EC2 Instance Rebalance Recommendation"]
    }
    lifecycle-terminate = {
      source        = ["aws.autoscaling"]
      "detail-type" = ["EC2 Instance-terminate Lifecycle Action"]
      detail        = { AutoScalingGroupName = [var.name] }
    }
    state-change = {
      source        = ["aws.ec2"]
      "detail-type" = ["EC2 Instance State-change Notification"]
      detail        = { state = ["stopping", "stopped", "shutting-down", "terminated"] }
    }
    # Instance retirement, stop and maintenance reboots AWS schedules ahead.
    health-scheduled-change = {
      source        = ["aws.health"]
      "detail-type" = ["AWS Health Event"]
      detail        = { service = ["EC2"], eventTypeCategory = ["scheduledChange"] }
    }
  }
  rule_names = { for k, _ in local.event_patterns : k => "${var.name}-${k}" }
  rule_arns  = [for k, n in local.rule_names : "${local.arn_prefix}:events:${var.region}:${var.account_id}:rule/${n}"]

  # --- the controller's permissions: its own group, queue, logs and token.
  controller_statements = concat(
    [
      {
        Sid      = "ReadGroups"
        Effect   = "Allow"
        Action   = ["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities"]
        Resource = "*" # neither action supports resource-level permissions
      },
      {
        Sid      = "ReadNodeToken"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = var.node_token_parameter_arn
      },
      {
        Sid       = "PublishDecisions"
        Effect    = "Allow"
        Action    = ["cloudwatch:PutMetricData"]
        Resource  = "*" # PutMetricData has no resource; the namespace condition scopes it
        Condition = { StringEquals = { "cloudwatch:namespace" = var.scale_on_load.namespace } }
      },
      {
        Sid      = "WriteOwnLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = "${local.log_group_arn}:*"
      },
    ],
    local.fallback_on ? [
      {
        Sid      = "ChangeOwnGroupOnDemandBase"
        Effect   = "Allow"
        Action   = ["autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags"]
        Resource = local.asg_arn
      },
      {
        Sid      = "ReadInstanceMarket"
        Effect   = "Allow"
        Action   = ["ec2:DescribeInstances"] # spot or on-demand: the group does not say
        Resource = "*"                       # DescribeInstances has no resource-level permissions
      },
    ] : [],
    local.queue_on ? [
      {
        Sid = "ConsumeInterruptionQueue"
        # SendMessage: the delayed checks of a silent agent's terminate action.
        Effect   = "Allow"
        Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility", "sqs:SendMessage"]
        Resource = local.queue_arn
      },
      {
        Sid      = "CompleteOwnGroupTerminateActions"
        Effect   = "Allow"
        Action   = ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"]
        Resource = local.asg_arn
      },
    ] : [],
    var.node_token_kms_key_arn == null ? [] : [{
      Sid       = "DecryptNodeTokenThroughSSM"
      Effect    = "Allow"
      Action    = ["kms:Decrypt"]
      Resource  = var.node_token_kms_key_arn
      Condition = { StringEquals = { "kms:ViaService" = "ssm.${var.region}.amazonaws.com" } }
    }],
    local.queue_on && var.interruption_queue.kms_key_arn != null ? [{
      Sid       = "DecryptQueueThroughSQS"
      Effect    = "Allow"
      Action    = ["kms:Decrypt", "kms:GenerateDataKey"] # receive, and send the checks
      Resource  = var.interruption_queue.kms_key_arn
      Condition = { StringEquals = { "kms:ViaService" = "sqs.${var.region}.amazonaws.com" } }
    }] : [],
    var.controller.tracing ? [{
      Sid      = "Tracing"
      Effect   = "Allow"
      Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      Resource = "*" # X-Ray has no resource-level permissions for these
    }] : [],
  )
  controller_policy = jsonencode({ Version = "2012-10-17", Statement = local.controller_statements })

  # Only these rules may send to the queue.
  queue_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EventBridgeRulesOfThisPool"
      Effect    = "Allow"
      Principal = { Service = "events.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = local.queue_arn
      Condition = { ArnEquals = { "aws:SourceArn" = local.rule_arns } }
    }]
  })

  # The nodes' extra permission when they publish their load.
  node_metrics_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "PublishLoad"
      Effect    = "Allow"
      Action    = ["cloudwatch:PutMetricData"]
      Resource  = "*"
      Condition = { StringEquals = { "cloudwatch:namespace" = var.scale_on_load.namespace } }
    }]
  })

  lambda_environment = {
    SPOTRELAY_ASG_NAME                = var.name
    SPOTRELAY_POOL                    = var.name
    SPOTRELAY_ROUTER_URLS             = join(",", var.router_urls)
    SPOTRELAY_NODE_TOKEN_PARAMETER    = var.node_token_parameter_arn
    SPOTRELAY_FALLBACK_ENABLED        = tostring(local.fallback_on)
    SPOTRELAY_FALLBACK_AFTER_S        = tostring(var.on_demand_fallback.fallback_after_s)
    SPOTRELAY_RECOVER_AFTER_S         = tostring(var.on_demand_fallback.recover_after_s)
    SPOTRELAY_RECOVER_BACKOFF_MAX_S   = tostring(var.on_demand_fallback.recover_backoff_max_s)
    SPOTRELAY_STEP_INTERVAL_S         = tostring(var.on_demand_fallback.step_interval_s)
    SPOTRELAY_MIN_READY               = tostring(var.on_demand_fallback.min_ready)
    SPOTRELAY_MAX_ON_DEMAND           = var.on_demand_fallback.max_on_demand == null ? "" : tostring(var.on_demand_fallback.max_on_demand)
    SPOTRELAY_BASE_ON_DEMAND          = tostring(var.on_demand_base_capacity)
    SPOTRELAY_DRAIN_ON_REBALANCE      = tostring(var.interruption_queue.drain_on_rebalance)
    SPOTRELAY_QUEUE_URL               = local.queue_on ? local.queue_url : ""
    SPOTRELAY_LIFECYCLE_CHECK_EVERY_S = tostring(var.interruption_queue.lifecycle_check_every_s)
    SPOTRELAY_LIFECYCLE_DEADLINE_S    = tostring(var.interruption_queue.lifecycle_deadline_s)
    SPOTRELAY_AGENT_SILENT_AFTER_S    = tostring(var.interruption_queue.agent_silent_after_s)
    SPOTRELAY_METRIC_NAMESPACE        = var.scale_on_load.namespace
  }

  # --- scaling on load: target tracking scales out (paced by the warm-up, so
  # nodes still loading the model do not count), a simple policy scales in one
  # node at a time with a cooldown, on an alarm well below the target.
  metric_name = var.scale_on_load.metric == "queue" ? "QueuePerNode" : "KvCacheUsage"
  scaling = {
    metric_name            = local.metric_name
    namespace              = var.scale_on_load.namespace
    target_value           = var.scale_on_load.target_per_node
    scale_out_warmup_s     = var.scale_on_load.scale_out_warmup_s
    scale_in_cooldown_s    = var.scale_on_load.scale_in_cooldown_s
    scale_in_threshold     = var.scale_on_load.target_per_node * var.scale_on_load.scale_in_below_ratio
    scale_in_after_minutes = var.scale_on_load.scale_in_after_minutes
  }

  # The agent.yaml `cloudwatch` section of every node.
  agent_cloudwatch = {
    enabled    = local.scaling_on
    namespace  = var.scale_on_load.namespace
    pool       = var.name
    interval_s = var.scale_on_load.publish_interval_s
  }
}
