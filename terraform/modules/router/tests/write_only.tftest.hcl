# The registry's AUTH token reaches ElastiCache write-only (auth_token_wo:
# never in state or plan). auth_token_wo exists from hashicorp/aws 6.62 on;
# the offline check's 5.100 provider lacks it, so tests/tfshim/tfreal.py runs
# this file only with a 6.x provider (docs/deploy.md, "How Terraform is
# checked").

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

run "auth_token_is_write_only" {
  command = apply

  assert {
    condition     = aws_elasticache_replication_group.registry.auth_token == null && aws_elasticache_replication_group.registry.auth_token_wo_version == 1
    error_message = "The AUTH token is write-only."
  }

  assert {
    condition     = aws_ssm_parameter.registry_auth_token.value_wo_version == aws_elasticache_replication_group.registry.auth_token_wo_version
    error_message = "The registry token's parameter is versioned with the cache's write-only AUTH token."
  }
}
