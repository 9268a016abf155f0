# Plan-level tests of the routers' CloudWatch alarms and dashboard against a
# mocked AWS provider (`make tf-validate`); which alarms exist and on which
# thresholds is tested offline in modules/alarms/tests.

mock_provider "aws" {
  source = "../../tests/mocks/aws" # shared mocked values
}

override_resource {
  target = aws_lb.heartbeat
  values = {
    arn      = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/llm-heartbeat/0123456789abcdef"
    dns_name = "internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com"
  }
}

override_resource {
  target = aws_lb_target_group.router
  values = {
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/spr-public/0123456789abcdef"
  }
}

override_resource {
  target = aws_lb_target_group.heartbeat
  values = {
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/sph-heartbeat/0123456789abcdef"
  }
}

variables {
  name                     = "llm"
  vpc_id                   = "vpc-0123456789abcdef0"
  subnet_ids               = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  agent_security_group_ids = ["sg-0123456789abcdef0"]
  load_balancer = {
    subnet_ids    = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
    allowed_cidrs = ["10.1.0.0/16"]
  }
  spotrelay_pip_spec = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
  spotrelay_sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
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
    condition     = module.cloudwatch.alarms["heartbeat-unhealthy"].dimensions.TargetGroup == aws_lb_target_group.heartbeat.arn_suffix
    error_message = "The heartbeat alarm watches the heartbeat target group."
  }

  assert {
    condition     = length(module.cloudwatch.alarms["lb-5xx"].alarm_actions) == 0
    error_message = "No topic, no actions."
  }

  assert {
    condition     = module.cloudwatch.dashboard.dashboard_name == "llm-routers"
    error_message = "One dashboard for the routers."
  }
}
