# Offline tests of the GPU pool's alarms and dashboard (no provider, nothing created).

variables {
  name = "llm-gpu"
}

run "off_by_default" {
  command = apply

  assert {
    condition     = length(output.alarms) == 0 && output.in_service_alarm == null && length(output.dashboard_widgets) == 0
    error_message = "The module creates no alarm unless enabled."
  }
}

run "a_plain_pool_gets_in_service_vs_desired_and_a_dashboard" {
  command = apply

  variables {
    enabled = true
  }

  assert {
    condition     = length(output.alarms) == 0 && output.in_service_alarm.name == "llm-gpu-in-service-below-desired"
    error_message = "Without controller, queue or scaling only the in-service alarm applies."
  }

  assert {
    condition     = output.in_service_alarm.expression == "desired - in_service" && output.in_service_alarm.minutes == 15
    error_message = "In service below desired for 15 minutes."
  }

  assert {
    condition     = [for w in output.dashboard_widgets : w.title] == ["Instances: in service vs desired"]
    error_message = "Only the widgets with metrics: the group's instances."
  }
}

run "everything_on" {
  command = apply

  variables {
    enabled             = true
    controller_function = "llm-gpu-controller"
    dlq_names           = ["llm-gpu-interruptions-dlq", "llm-gpu-controller-dlq"]
    fallback            = { enabled = true, base = 1, namespace = "spotrelay" }
    load                = { namespace = "spotrelay", metric = "QueuePerNode", target = 8 }
  }

  assert {
    condition = toset(keys(output.alarms)) == toset([
      "controller-errors", "llm-gpu-interruptions-dlq-not-empty", "llm-gpu-controller-dlq-not-empty",
      "on-demand-fallback", "load-high",
    ])
    error_message = "Controller errors, both DLQs, the fallback and the load."
  }

  assert {
    condition     = output.alarms["llm-gpu-interruptions-dlq-not-empty"].metric_name == "ApproximateNumberOfMessagesVisible" && output.alarms["llm-gpu-interruptions-dlq-not-empty"].threshold == 0
    error_message = "A DLQ alarms on its first visible message."
  }

  assert {
    condition     = output.alarms["on-demand-fallback"].threshold == 1 && output.alarms["on-demand-fallback"].evaluation_periods == 30 && output.alarms["on-demand-fallback"].dimensions.Pool == "llm-gpu"
    error_message = "The fallback alarm fires when the base stays above the configured one for 30 minutes."
  }

  assert {
    condition     = output.alarms["load-high"].threshold == 16 && output.alarms["load-high"].metric_name == "QueuePerNode"
    error_message = "The load alarm is at twice the scaling target."
  }

  assert {
    condition     = alltrue([for a in output.alarms : strcontains(a.description, "docs/runbook.md#")])
    error_message = "Every alarm names its runbook entry."
  }

  assert {
    condition     = length(output.dashboard_widgets) == 4 && alltrue([for w in output.dashboard_widgets : w.stat == "Maximum"])
    error_message = "Instances, load, fallback, controller and DLQs."
  }
}

run "bad_minutes_are_refused" {
  command = plan

  variables {
    below_desired_minutes = 0
  }

  expect_failures = [var.below_desired_minutes]
}
