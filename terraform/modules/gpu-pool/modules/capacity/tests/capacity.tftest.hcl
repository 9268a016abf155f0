# Offline tests of the capacity pieces: the rendered policy documents, event
# patterns and scaling settings (no provider, nothing created).

variables {
  name                     = "llm-gpu"
  region                   = "us-east-1"
  account_id               = "123456789012"
  router_urls              = ["http://10.0.1.10:8080", "http://10.0.2.10:8080"]
  node_token_parameter_arn = "arn:aws:ssm:us-east-1:123456789012:parameter/spotrelay/llm/node-token"
}

run "everything_off_by_default" {
  command = apply

  variables {
    router_urls = []
  }

  assert {
    condition     = !output.enabled.scaling && !output.enabled.fallback && !output.enabled.queue && !output.enabled.controller
    error_message = "Scaling, fallback and the queue are opt-in."
  }

  assert {
    condition     = !output.agent_cloudwatch.enabled
    error_message = "Agents publish no metrics unless scaling on load is on."
  }

  assert {
    condition     = !strcontains(output.controller_policy, "UpdateAutoScalingGroup") && !strcontains(output.controller_policy, "sqs:")
    error_message = "Without fallback and queue the controller may neither change the group nor read a queue."
  }
}

run "fallback_policy_is_scoped_to_its_group" {
  command = apply

  variables {
    on_demand_fallback = { enabled = true }
  }

  assert {
    condition = one([
      for s in jsondecode(output.controller_policy).Statement : s.Resource
      if contains(s.Action, "autoscaling:UpdateAutoScalingGroup")
    ]) == "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/llm-gpu"
    error_message = "The controller may update only its own group."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(output.controller_policy).Statement :
      s.Resource != "*" || alltrue([for a in s.Action : contains([
        "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities",
        "ec2:DescribeInstances", "cloudwatch:PutMetricData", "xray:PutTraceSegments", "xray:PutTelemetryRecords",
      ], a)])
    ])
    error_message = "Resource \"*\" only for actions without resource-level permissions."
  }

  assert {
    condition = one([
      for s in jsondecode(output.controller_policy).Statement : s.Condition.StringEquals["cloudwatch:namespace"]
      if contains(s.Action, "cloudwatch:PutMetricData")
    ]) == "spotrelay"
    error_message = "Metrics are limited to the spotrelay namespace."
  }

  assert {
    condition = one([
      for s in jsondecode(output.controller_policy).Statement : s.Resource if s.Sid == "WriteOwnLogs"
    ]) == "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/llm-gpu-controller:*"
    error_message = "Logs go to the function's own log group."
  }

  assert {
    condition     = output.lambda_environment.SPOTRELAY_ASG_NAME == "llm-gpu" && output.lambda_environment.SPOTRELAY_ROUTER_URLS == "http://10.0.1.10:8080,http://10.0.2.10:8080"
    error_message = "The controller knows its group and every router."
  }

  assert {
    condition     = output.lambda_environment.SPOTRELAY_FALLBACK_AFTER_S == "0" && output.lambda_environment.SPOTRELAY_MAX_ON_DEMAND == "" && output.lambda_environment.SPOTRELAY_FALLBACK_ENABLED == "true"
    error_message = "Thresholds reach the controller; no max_on_demand means the group's desired capacity."
  }

  assert {
    condition     = output.lambda_environment.SPOTRELAY_QUEUE_URL == "" && !strcontains(output.controller_policy, "CompleteLifecycleAction")
    error_message = "Without the queue there are no lifecycle checks to send, nor actions to complete."
  }

  assert {
    condition     = output.lambda_environment.SPOTRELAY_RECOVER_AFTER_S == "1800" && output.lambda_environment.SPOTRELAY_RECOVER_BACKOFF_MAX_S == "14400"
    error_message = "Recovery probes back off from recover_after_s up to recover_backoff_max_s (4 h by default)."
  }

  assert {
    condition     = !contains(keys(output.lambda_environment), "SPOTRELAY_NODE_TOKEN") && startswith(output.lambda_environment.SPOTRELAY_NODE_TOKEN_PARAMETER, "arn:aws:ssm:")
    error_message = "The environment names the token's parameter, never the token."
  }
}

run "queue_policy_and_patterns" {
  command = apply

  variables {
    interruption_queue = {
      enabled     = true
      kms_key_arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    }
  }

  assert {
    condition     = toset(keys(output.event_patterns)) == toset(["spot-interruption", "rebalance", "lifecycle-terminate", "state-change", "health-scheduled-change"])
    error_message = "The events of the termination handler's queue mode."
  }

  assert {
    condition = jsondecode(output.event_patterns["health-scheduled-change"]) == {
      source        = ["aws.health"]
      "detail-type" = ["AWS Health Event"]
      detail        = { service = ["EC2"], eventTypeCategory = ["scheduledChange"] }
    }
    error_message = "AWS Health scheduled changes of EC2 instances (retirement, stop, maintenance reboot)."
  }

  assert {
    condition     = jsondecode(output.event_patterns["spot-interruption"])["detail-type"] == ["EC2 Spot Instance Interruption Warning"]
    error_message = "Spot interruption warnings match by their documented detail-type."
  }

  assert {
    condition     = jsondecode(output.event_patterns["lifecycle-terminate"]).detail.AutoScalingGroupName == ["llm-gpu"]
    error_message = "Lifecycle actions are filtered to this group."
  }

  assert {
    condition     = toset(jsondecode(output.event_patterns["state-change"]).detail.state) == toset(["stopping", "stopped", "shutting-down", "terminated"])
    error_message = "State changes only when the instance is going away."
  }

  assert {
    condition     = jsondecode(output.queue_policy).Statement[0].Principal.Service == "events.amazonaws.com" && jsondecode(output.queue_policy).Statement[0].Action == "sqs:SendMessage"
    error_message = "Only EventBridge may send to the queue."
  }

  assert {
    condition     = length(jsondecode(output.queue_policy).Statement[0].Condition.ArnEquals["aws:SourceArn"]) == 5 && alltrue([for a in jsondecode(output.queue_policy).Statement[0].Condition.ArnEquals["aws:SourceArn"] : startswith(a, "arn:aws:events:us-east-1:123456789012:rule/llm-gpu-")])
    error_message = "…and only from this pool's five rules."
  }

  assert {
    condition = one([
      for s in jsondecode(output.controller_policy).Statement : s.Resource if s.Sid == "CompleteOwnGroupTerminateActions"
    ]) == "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/llm-gpu"
    error_message = "The controller completes (and heartbeats) lifecycle actions of its own group only."
  }

  assert {
    condition     = output.lambda_environment.SPOTRELAY_QUEUE_URL == "https://sqs.us-east-1.amazonaws.com/123456789012/llm-gpu-interruptions" && output.lambda_environment.SPOTRELAY_LIFECYCLE_CHECK_EVERY_S == "10" && output.lambda_environment.SPOTRELAY_LIFECYCLE_DEADLINE_S == "300"
    error_message = "The controller sends its lifecycle checks to its own queue."
  }

  assert {
    condition = one([
      for s in jsondecode(output.controller_policy).Statement : s.Action if s.Sid == "DecryptQueueThroughSQS"
    ]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    error_message = "Sending the checks to a queue under a customer managed key needs GenerateDataKey."
  }

  assert {
    condition = one([
      for s in jsondecode(output.controller_policy).Statement : s.Resource if s.Sid == "ConsumeInterruptionQueue"
    ]) == "arn:aws:sqs:us-east-1:123456789012:llm-gpu-interruptions"
    error_message = "The controller reads only its own queue."
  }

  assert {
    condition = one([
      for s in jsondecode(output.controller_policy).Statement : s.Condition.StringEquals["kms:ViaService"] if s.Sid == "DecryptQueueThroughSQS"
    ]) == "sqs.us-east-1.amazonaws.com"
    error_message = "The queue's key is usable only through SQS."
  }

  assert {
    condition     = output.queue_settings.visibility_timeout_s == 360 && output.queue_settings.max_receive_count == 5
    error_message = "Visibility is 6x the function timeout; 5 receives before the DLQ."
  }

  assert {
    condition     = !strcontains(output.controller_policy, "UpdateAutoScalingGroup")
    error_message = "The queue alone does not let the controller change the group."
  }
}

run "scaling_settings" {
  command = apply

  variables {
    scale_on_load = {
      enabled         = true
      target_per_node = 6
    }
  }

  assert {
    condition     = output.scaling.metric_name == "QueuePerNode" && output.scaling.target_value == 6 && output.scaling.scale_in_threshold == 3
    error_message = "Target tracking on requests per node; scale in below half the target."
  }

  assert {
    condition     = output.scaling.scale_out_warmup_s == 900 && output.scaling.scale_in_cooldown_s == 1800
    error_message = "Warm-up and cooldown suit a cold start of minutes."
  }

  assert {
    condition     = output.agent_cloudwatch.enabled && output.agent_cloudwatch.pool == "llm-gpu" && output.agent_cloudwatch.interval_s == 60
    error_message = "Agents publish once a minute with the pool as dimension."
  }

  assert {
    condition     = jsondecode(output.node_metrics_policy).Statement[0].Condition.StringEquals["cloudwatch:namespace"] == "spotrelay"
    error_message = "Nodes may publish to the spotrelay namespace only."
  }
}

run "kv_cache_metric" {
  command = apply

  variables {
    scale_on_load = {
      enabled         = true
      metric          = "kv_cache"
      target_per_node = 70
    }
  }

  assert {
    condition     = output.scaling.metric_name == "KvCacheUsage" && output.scaling.scale_in_threshold == 35
    error_message = "KV-cache usage can be the scaling metric."
  }
}

# --- negative cases ---------------------------------------------------------------

run "rejects_unknown_metric" {
  command = plan
  variables {
    scale_on_load = { metric = "cpu" }
  }
  expect_failures = [var.scale_on_load]
}

run "rejects_short_cooldown" {
  command = plan
  variables {
    scale_on_load = { scale_in_cooldown_s = 60 }
  }
  expect_failures = [var.scale_on_load]
}

run "rejects_bad_schedule" {
  command = plan
  variables {
    on_demand_fallback = { schedule = "every minute" }
  }
  expect_failures = [var.on_demand_fallback]
}

run "rejects_backoff_cap_below_recover_after" {
  command = plan
  variables {
    on_demand_fallback = { enabled = true, recover_after_s = 1800, recover_backoff_max_s = 600 }
  }
  expect_failures = [var.on_demand_fallback]
}

run "backoff_cap_reaches_the_controller" {
  command = apply
  variables {
    on_demand_fallback      = { enabled = true, recover_after_s = 900, recover_backoff_max_s = 900 }
    on_demand_base_capacity = 1
  }
  assert {
    condition     = output.lambda_environment.SPOTRELAY_BASE_ON_DEMAND == "1"
    error_message = "The configured base reaches the controller: terraform no longer sets it on an existing group, the controller follows it."
  }
  assert {
    condition     = output.lambda_environment.SPOTRELAY_RECOVER_BACKOFF_MAX_S == "900"
    error_message = "A cap equal to recover_after_s (no backoff) is accepted and passed on."
  }
}

run "rejects_fractional_max_on_demand" {
  command = plan
  variables {
    on_demand_fallback = { enabled = true, max_on_demand = 1.5 }
  }
  expect_failures = [var.on_demand_fallback]
}

run "rejects_lifecycle_check_beyond_sqs_delay" {
  command = plan
  variables {
    interruption_queue = { enabled = true, lifecycle_check_every_s = 901 }
  }
  expect_failures = [var.interruption_queue]
}

run "rejects_max_below_configured_base" {
  command = plan
  variables {
    on_demand_fallback      = { enabled = true, max_on_demand = 1 }
    on_demand_base_capacity = 2
  }
  expect_failures = [output.enabled]
}

run "rejects_controller_without_routers" {
  command = plan
  variables {
    router_urls        = []
    interruption_queue = { enabled = true }
  }
  expect_failures = [output.enabled]
}

run "rejects_bad_log_retention" {
  command = plan
  variables {
    controller = { log_retention_days = 42 }
  }
  expect_failures = [var.controller]
}
