# The GPU nodes do not depend on the number of routers: their user data names
# the internal heartbeat endpoint, never a router. Changing router_count must
# leave the GPU launch template (and so every GPU node) untouched. Runs
# against a mocked AWS provider in `make tf-validate`.

mock_provider "aws" {
  source = "../../tests/mocks/aws" # shared mocked values
}

# The heartbeat endpoint's address: fixed for the life of the internal load
# balancer, whatever sits behind it.
override_resource {
  target = module.router.aws_lb.heartbeat
  values = {
    arn      = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/spotrelay-heartbeat/0123456789abcdef"
    dns_name = "internal-spotrelay-heartbeat-123.us-east-1.elb.amazonaws.com"
  }
}

# Security group ids are validated across the modules (sg-...).
override_resource {
  target = module.gpu_pool.module.node_security_group.aws_security_group.this
  values = {
    id = "sg-0123456789abcdef0"
  }
}

override_resource {
  target = module.gpu_pool.module.controller_security_group[0].aws_security_group.this
  values = {
    id = "sg-0aaaaaaaaaaaaaaa0"
  }
}

override_resource {
  target = module.router.module.security_group["router"].aws_security_group.this
  values = {
    id = "sg-0fedcba9876543210"
  }
}

variables {
  region             = "us-east-1"
  vpc_id             = "vpc-0123456789abcdef0"
  private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  allowed_cidrs      = ["10.1.0.0/16"]
  model = {
    name = "Qwen/Qwen2.5-7B-Instruct"
  }
  # The instance-fit check (model_fit_known) needs the model's size.
  model_params_billion = 7.6
  spotrelay_wheel = {
    key    = "spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
  }
}

run "two_routers" {
  command = apply

  assert {
    condition     = module.router.autoscaling_group_name == "spotrelay-router"
    error_message = "One router group."
  }

  assert {
    condition     = strcontains(module.gpu_pool.user_data, "internal-spotrelay-heartbeat-123.us-east-1.elb.amazonaws.com:8081")
    error_message = "GPU nodes register with the internal heartbeat endpoint."
  }
}

run "five_routers" {
  command = apply

  variables {
    router_count = 5
  }

  assert {
    condition     = output.gpu_pool_user_data_sha256 == run.two_routers.gpu_pool_user_data_sha256
    error_message = "Changing router_count must not change the GPU launch template's user data."
  }

  assert {
    condition     = module.router.autoscaling_group_name == run.two_routers.router_asg_name
    error_message = "Still one router group."
  }
}

run "cost_tags_and_engine_port" {
  command = apply

  variables {
    tags        = { CostCenter = "ml-inference" }
    engine_port = 8001
  }

  assert {
    condition     = module.gpu_pool.instance_tags["CostCenter"] == "ml-inference" && module.gpu_pool.instance_tags["Project"] == "spotrelay"
    error_message = "The example's tags reach the GPU instances (provider default_tags alone never reach what an Auto Scaling group launches)."
  }

  assert {
    condition     = module.router.node_port == 8001 && module.gpu_pool.engine_port == 8001
    error_message = "One setting, engine_port, sets the port vLLM listens on and the port the routers reach nodes on."
  }
}
