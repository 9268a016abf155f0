# Plan-level tests of the routers' CloudWatch alarms and dashboard against a
# mocked AWS provider (`make tf-validate`); which alarms exist and on which
# thresholds is tested offline in modules/alarms/tests.

mock_provider "aws" {
  source = "../../tests/mocks/aws" # shared mocked values
}

run "no_alarms_by_default" {
  command = plan

  assert {
    condition     = length(module.cloudwatch.alarms) == 0 && module.cloudwatch.dashboard == null
    error_message = "Alarms are opt-in in the module."
  }
}

run "five_xx_and_unhealthy_hosts" {
  command = apply

  variables {
    alarms_enabled = true
  }

  assert {
    condition     = toset(keys(module.cloudwatch.alarms)) == toset(["lb-5xx", "router-5xx", "routers-unhealthy", "heartbeat-unhealthy"])
    error_message = "The load balancer's and the routers' 5xx, unhealthy routers behind both load balancers."
  }

  assert {
    condition     = module.cloudwatch.alarms["heartbeat-unhealthy"].dimensions.TargetGroup == aws_lb_target_group.routers["heartbeat"].arn_suffix
    error_message = "The heartbeat alarm watches the heartbeat target group."
  }

  assert {
    condition     = length(module.cloudwatch.alarms["lb-5xx"].alarm_actions) == 0
    error_message = "No topic, no actions."
  }

  assert {
    condition     = module.cloudwatch.dashboard.dashboard_name == "llm-routers" && length(jsondecode(module.cloudwatch.dashboard.dashboard_body).widgets) == 4
    error_message = "One dashboard for the routers, its four graphs."
  }
}
