# Offline tests of the routers' alarms and dashboard (no provider, nothing created).

variables {
  name = "llm"
  load_balancers = {
    public_lb           = "app/llm-public/0123456789abcdef"
    public_target_group = "targetgroup/spr-1/0123456789abcdef"
    heartbeat_lb        = "app/llm-heartbeat/fedcba9876543210"
    heartbeat_group     = "targetgroup/sprh-1/fedcba9876543210"
  }
}

run "off_by_default" {
  command = apply

  assert {
    condition     = length(output.alarms) == 0 && length(output.dashboard_widgets) == 0
    error_message = "No alarm unless enabled."
  }
}

run "five_xx_and_unhealthy_hosts" {
  command = apply

  variables {
    enabled = true
  }

  assert {
    condition     = toset(keys(output.alarms)) == toset(["lb-5xx", "router-5xx", "routers-unhealthy", "heartbeat-unhealthy"])
    error_message = "The load balancer's and the routers' 5xx, unhealthy routers behind both load balancers."
  }

  assert {
    condition     = output.alarms["lb-5xx"].metric_name == "HTTPCode_ELB_5XX_Count" && output.alarms["lb-5xx"].threshold == 10 && output.alarms["lb-5xx"].dimensions.LoadBalancer == "app/llm-public/0123456789abcdef"
    error_message = "The load balancer's own 5xx, over 10 a minute."
  }

  assert {
    condition     = output.alarms["heartbeat-unhealthy"].dimensions.TargetGroup == "targetgroup/sprh-1/fedcba9876543210" && output.alarms["heartbeat-unhealthy"].threshold == 0
    error_message = "Any unhealthy router behind the heartbeat load balancer."
  }

  assert {
    condition     = alltrue([for a in output.alarms : strcontains(a.description, "docs/runbook.md#")])
    error_message = "Alarms name their runbook entry."
  }

  assert {
    condition     = [for w in output.dashboard_widgets : w.stat] == ["Sum", "Sum", "p99", "Maximum"]
    error_message = "Requests, 5xx, latency, hosts."
  }
}

run "errors_per_minute_must_be_positive" {
  command = plan

  variables {
    errors_per_minute = 0
  }

  expect_failures = [var.errors_per_minute]
}
