# The routers' CloudWatch alarms and dashboard graphs as data; the parent creates
# them with ../../../shared/cloudwatch-alarms (the SNS actions, the dashboard
# layout). Every alarm names its runbook entry (docs/runbook.md) in its
# description.

locals {
  runbook = "docs/runbook.md#"
  lbs     = var.load_balancers

  five_xx = {
    lb-5xx = {
      metric = "HTTPCode_ELB_5XX_Count"
      what   = "The public load balancer answered 5xx itself (no healthy router, or routers too slow)"
    }
    router-5xx = {
      metric = "HTTPCode_Target_5XX_Count"
      what   = "The routers answered 5xx to clients (no capacity, every attempt failed)"
    }
  }
  unhealthy = {
    routers-unhealthy = {
      lb    = local.lbs.public_lb
      group = local.lbs.public_target_group
      what  = "routers failing the public load balancer's /healthz"
    }
    heartbeat-unhealthy = {
      lb    = local.lbs.heartbeat_lb
      group = local.lbs.heartbeat_group
      what  = "routers failing the heartbeat load balancer's check: agents' heartbeats may not arrive"
    }
  }

  alarms = var.enabled ? merge(
    { for k, v in local.five_xx : k => {
      description         = "${v.what}: more than ${var.errors_per_minute} a minute for 5 min. ${local.runbook}spotrelayclienterrorrate"
      namespace           = "AWS/ApplicationELB"
      metric_name         = v.metric
      dimensions          = { LoadBalancer = local.lbs.public_lb }
      statistic           = "Sum"
      period              = 60
      evaluation_periods  = 5
      threshold           = var.errors_per_minute
      comparison_operator = "GreaterThanThreshold"
      treat_missing_data  = "notBreaching"
    } },
    { for k, v in local.unhealthy : k => {
      description         = "Unhealthy hosts for 5 min: ${v.what}. ${local.runbook}the-router-itself"
      namespace           = "AWS/ApplicationELB"
      metric_name         = "UnHealthyHostCount"
      dimensions          = { LoadBalancer = v.lb, TargetGroup = v.group }
      statistic           = "Maximum"
      period              = 60
      evaluation_periods  = 5
      threshold           = 0
      comparison_operator = "GreaterThanThreshold"
      treat_missing_data  = "notBreaching"
    } },
  ) : {}

  lb     = ["LoadBalancer", local.lbs.public_lb]
  public = ["TargetGroup", local.lbs.public_target_group, "LoadBalancer", local.lbs.public_lb]
  widgets = [
    { title = "Requests", stat = "Sum", metrics = [concat(["AWS/ApplicationELB", "RequestCount"], local.lb)] },
    { title = "5xx: load balancer and routers", stat = "Sum", metrics = [
      concat(["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count"], local.lb),
      concat(["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"], local.lb),
    ] },
    { title = "Response time p99 (streams: to the end)", stat = "p99", metrics = [
      concat(["AWS/ApplicationELB", "TargetResponseTime"], local.lb),
    ] },
    { title = "Healthy and unhealthy routers", stat = "Maximum", metrics = [
      concat(["AWS/ApplicationELB", "HealthyHostCount"], local.public),
      concat(["AWS/ApplicationELB", "UnHealthyHostCount"], local.public),
    ] },
  ]
}
