# Plan-level tests of the pool's CloudWatch alarms, dashboard and group metrics
# against mocked providers (`make tf-validate`); which alarms exist and on which
# thresholds is tested offline in modules/alarms/tests.

mock_provider "aws" {
  source = "../../tests/mocks/aws" # shared mocked values
}

run "no_alarms_by_default" {
  command = plan

  assert {
    condition     = length(module.cloudwatch.alarms) == 0 && length(aws_cloudwatch_metric_alarm.in_service_below_desired) == 0 && module.cloudwatch.dashboard == null
    error_message = "Alarms are opt-in in the module."
  }

  assert {
    condition     = length(aws_autoscaling_group.node.enabled_metrics) == 0
    error_message = "No group metrics without the alarms."
  }
}

run "alarms_for_every_feature" {
  command = plan

  variables {
    alarms_enabled      = true
    alarm_sns_topic_arn = "arn:aws:sns:us-east-1:123456789012:oncall"
    on_demand_fallback  = { enabled = true }
    interruption_queue  = { enabled = true }
    scale_on_load       = { enabled = true, target_per_node = 6 }
  }

  assert {
    condition = toset(keys(module.cloudwatch.alarms)) == toset([
      "controller-errors", "llm-gpu-interruptions-dlq-not-empty", "llm-gpu-controller-dlq-not-empty",
      "on-demand-fallback", "load-high",
    ])
    error_message = "Controller errors, both dead-letter queues, the fallback and the load."
  }

  assert {
    condition     = module.cloudwatch.alarms["load-high"].threshold == 12 && module.cloudwatch.alarms["controller-errors"].dimensions.FunctionName == "llm-gpu-controller"
    error_message = "The load alarm at twice the target; the controller alarm on its function."
  }

  assert {
    condition     = toset(module.cloudwatch.alarms["on-demand-fallback"].alarm_actions) == toset(["arn:aws:sns:us-east-1:123456789012:oncall"])
    error_message = "Alarms notify the topic."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.in_service_below_desired[0].alarm_name == "llm-gpu-in-service-below-desired" && length(aws_cloudwatch_metric_alarm.in_service_below_desired[0].metric_query) == 3
    error_message = "In service vs desired is metric math over the group's two metrics."
  }

  assert {
    condition     = contains(aws_autoscaling_group.node.enabled_metrics, "GroupInServiceInstances") && contains(aws_autoscaling_group.node.enabled_metrics, "GroupDesiredCapacity")
    error_message = "The alarm's metrics are enabled on the group."
  }

  assert {
    condition     = module.cloudwatch.dashboard.dashboard_name == "llm-gpu" && [for w in jsondecode(module.cloudwatch.dashboard.dashboard_body).widgets : [w.x, w.y, w.properties.region]] == [[0, 0, "us-east-1"], [12, 0, "us-east-1"], [0, 6, "us-east-1"], [12, 6, "us-east-1"]]
    error_message = "One dashboard named after the pool, its four graphs two a row."
  }
}
