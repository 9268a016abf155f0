# Plan-level tests of the capacity resources (scaling on load, interruption
# queue, controller Lambda) against mocked providers. Like gpu_pool.tftest.hcl
# they need the provider schemas, so they run in `make tf-validate`; the policy
# documents and patterns are tested offline in modules/capacity/tests. Only
# values known at plan are asserted (ids and ARNs are unknown until apply).

mock_provider "aws" {
  source = "../../tests/mocks/aws" # shared mocked values
}

run "nothing_by_default" {
  command = plan

  assert {
    condition     = length(aws_lambda_function.controller) == 0 && length(aws_sqs_queue.interruptions) == 0 && length(aws_autoscaling_policy.scale_out) == 0
    error_message = "Scaling, fallback and the queue are off by default."
  }
}

run "queue_and_fallback" {
  command = plan

  variables {
    on_demand_fallback = { enabled = true }
    interruption_queue = { enabled = true }
  }

  assert {
    condition     = length(aws_cloudwatch_event_rule.interruption) == 5
    error_message = "Five EventBridge rules feed the queue (spot warning, rebalance, terminate lifecycle action, state change, AWS Health scheduled change)."
  }

  assert {
    condition     = aws_sqs_queue.interruptions[0].sqs_managed_sse_enabled && aws_sqs_queue.interruptions_dlq[0].sqs_managed_sse_enabled
    error_message = "Queue and DLQ are encrypted (SSE-SQS without a key)."
  }

  assert {
    condition     = aws_sqs_queue.interruptions[0].visibility_timeout_seconds == 360 && aws_sqs_queue.interruptions[0].message_retention_seconds == 3600
    error_message = "Visibility is 6x the function timeout; events older than an hour are useless."
  }

  assert {
    condition     = aws_lambda_function.controller[0].handler == "spotrelay.controller.handler.handler" && aws_lambda_function.controller[0].runtime == "python3.12"
    error_message = "The Lambda runs spotrelay.controller."
  }

  assert {
    condition     = aws_lambda_function.controller[0].environment[0].variables["SPOTRELAY_ASG_NAME"] == "llm-gpu"
    error_message = "The controller is configured for its own group."
  }

  assert {
    condition     = aws_cloudwatch_event_rule.fallback_schedule[0].schedule_expression == "rate(1 minute)"
    error_message = "The fallback runs on a schedule."
  }

  assert {
    condition     = one(aws_lambda_event_source_mapping.interruptions[0].function_response_types) == "ReportBatchItemFailures"
    error_message = "Failed records are retried one by one, not the whole batch."
  }

  assert {
    condition     = length(aws_lambda_function.controller[0].vpc_config[0].security_group_ids) == 1 && aws_lambda_function.controller[0].environment[0].variables["SPOTRELAY_ROUTER_URLS"] == "http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"
    error_message = "The controller asks the routers' internal control endpoint."
  }

  assert {
    condition     = length(module.controller_security_group) == 1 && aws_lambda_function.controller[0].replace_security_groups_on_destroy
    error_message = "The controller has its own security group, released before the function is deleted (so `down` does not wait on its network interfaces)."
  }

  assert {
    condition     = toset([for r in module.controller_security_group[0].egress_rules : r.from_port]) == toset([443])
    error_message = "The controller leaves on HTTPS only (the AWS APIs); the router module adds its control endpoint."
  }

  assert {
    condition     = aws_lambda_function.controller[0].reserved_concurrent_executions == null && aws_lambda_function.controller[0].tracing_config[0].mode == "Active"
    error_message = "No reserved concurrency by default (a new account's quota has none to spare); tracing on."
  }

  assert {
    condition     = aws_lambda_function.controller[0].filename == "./package/spotrelay-controller.zip" && aws_lambda_function.controller[0].source_code_hash == filebase64sha256("./package/spotrelay-controller.zip")
    error_message = "The controller is deployed from the committed package, not a zip written at plan time."
  }
}

run "dlq_with_a_customer_key" {
  command = plan

  override_resource {
    target          = aws_sqs_queue.controller_dlq[0]
    override_during = plan
    values = {
      arn = "arn:aws:sqs:us-east-1:123456789012:llm-gpu-controller-dlq"
    }
  }

  variables {
    on_demand_fallback = { enabled = true }
    controller         = { kms_key_arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555" }
  }

  assert {
    condition = anytrue([for s in jsondecode(aws_iam_role_policy.controller_dlq[0].policy).Statement :
      s.Resource == "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555" && contains(s.Action, "kms:GenerateDataKey") && contains(s.Action, "kms:Decrypt")
    ])
    error_message = "The controller may make data keys with the DLQ's key, or Lambda cannot put failed invocations on the encrypted DLQ."
  }
}

run "reserved_concurrency_when_asked" {
  command = plan

  variables {
    on_demand_fallback = { enabled = true }
    controller         = { reserved_concurrency = 5 }
  }

  assert {
    condition     = aws_lambda_function.controller[0].reserved_concurrent_executions == 5
    error_message = "controller.reserved_concurrency reserves what it says."
  }
}

run "rejects_reservation_below_the_pollers" {
  command = plan

  variables {
    on_demand_fallback = { enabled = true }
    controller         = { reserved_concurrency = 1 }
  }

  expect_failures = [var.controller]
}

run "scaling_on_load" {
  command = plan

  variables {
    scale_on_load = {
      enabled         = true
      target_per_node = 6
    }
  }

  assert {
    condition     = aws_autoscaling_policy.scale_out[0].policy_type == "TargetTrackingScaling" && aws_autoscaling_policy.scale_out[0].estimated_instance_warmup == 900
    error_message = "Target tracking scales out, paced by a cold-start warm-up."
  }

  assert {
    condition     = aws_autoscaling_policy.scale_out[0].target_tracking_configuration[0].disable_scale_in
    error_message = "Scale in is the separate, slower policy."
  }

  assert {
    condition     = aws_autoscaling_policy.scale_in[0].cooldown == 1800 && aws_autoscaling_policy.scale_in[0].scaling_adjustment == -1
    error_message = "Scale in removes one node per cooldown."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.scale_in[0].threshold == 3 && aws_cloudwatch_metric_alarm.scale_in[0].evaluation_periods == 15
    error_message = "Scale in only after 15 minutes at half the target."
  }

  assert {
    condition     = length(aws_iam_role_policy.node_metrics) == 1
    error_message = "Nodes may publish their load."
  }
}
