# Shared mocked values for the modules' mock_provider "aws" tests: the data
# sources they read, and computed attributes the provider validates (ARNs,
# launch template ids). Values of one test's resources are overridden in its file.

mock_data "aws_region" {
  defaults = {
    id     = "us-east-1"
    name   = "us-east-1"
    region = "us-east-1"
  }
}

mock_data "aws_caller_identity" {
  defaults = {
    account_id = "123456789012"
  }
}

mock_data "aws_partition" {
  defaults = {
    partition = "aws"
  }
}

mock_data "aws_vpc" {
  defaults = {
    cidr_block = "10.0.0.0/16"
    cidr_block_associations = [{
      association_id = "vpc-cidr-assoc-0123456789abcdef0"
      cidr_block     = "10.0.0.0/16"
      state          = "associated"
    }]
  }
}

mock_data "aws_subnet" {
  defaults = {
    cidr_block = "10.0.1.0/24"
  }
}

# The GPU AMI id the gpu-pool module reads from SSM at plan time.
mock_data "aws_ssm_parameter" {
  defaults = {
    insecure_value = "ami-0fedcba9876543210"
  }
}

mock_data "aws_iam_policy_document" {
  defaults = {
    json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
  }
}

mock_resource "aws_lb" {
  defaults = {
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/llm/0123456789abcdef"
  }
}

mock_resource "aws_lb_listener" {
  defaults = {
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/llm/0123456789abcdef/0123456789abcdef"
  }
}

mock_resource "aws_lb_target_group" {
  defaults = {
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/spr/0123456789abcdef"
  }
}

mock_resource "aws_iam_instance_profile" {
  defaults = {
    arn = "arn:aws:iam::123456789012:instance-profile/llm"
  }
}

mock_resource "aws_launch_template" {
  defaults = {
    id = "lt-0123456789abcdef0"
  }
}

mock_resource "aws_ssm_parameter" {
  defaults = {
    arn = "arn:aws:ssm:us-east-1:123456789012:parameter/spotrelay/llm/node-token"
  }
}

mock_resource "aws_elasticache_replication_group" {
  defaults = {
    primary_endpoint_address = "master.llm-registry.abc123.use1.cache.amazonaws.com"
  }
}

# The capacity controller (on in the example): its role, queues, schedule rule and
# function are ARNs that other resources validate.
mock_resource "aws_iam_role" {
  defaults = {
    arn = "arn:aws:iam::123456789012:role/spotrelay-mock"
  }
}

mock_resource "aws_sqs_queue" {
  defaults = {
    arn = "arn:aws:sqs:us-east-1:123456789012:spotrelay-mock"
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/spotrelay-mock"
  }
}

mock_resource "aws_cloudwatch_event_rule" {
  defaults = {
    arn = "arn:aws:events:us-east-1:123456789012:rule/spotrelay-mock"
  }
}

mock_resource "aws_lambda_function" {
  defaults = {
    arn = "arn:aws:lambda:us-east-1:123456789012:function:spotrelay-mock"
  }
}

# The router module's own tests (root addresses; Terraform ignores an override
# whose target a configuration does not have): the heartbeat endpoint's fixed
# address, and distinct ARNs for the two target groups.
override_resource {
  target = aws_lb.heartbeat
  values = {
    arn      = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/llm-heartbeat/0123456789abcdef"
    dns_name = "internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com"
  }
}

override_resource {
  target = aws_lb_target_group.routers["public"]
  values = {
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/spr-public/0123456789abcdef"
  }
}

override_resource {
  target = aws_lb_target_group.routers["heartbeat"]
  values = {
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/sph-heartbeat/0123456789abcdef"
  }
}
