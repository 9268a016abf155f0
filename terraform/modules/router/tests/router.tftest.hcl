# Plan-level tests of the router module against mocked providers (run in
# `make tf-validate`, where the provider schemas can be downloaded).

mock_provider "aws" {
  mock_data "aws_region" {
    defaults = {
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
    }
  }
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

mock_provider "random" {}

variables {
  name       = "llm"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  load_balancer = {
    subnet_ids    = ["subnet-0ccccccccccccccccc", "subnet-0ddddddddddddddddd"]
    allowed_cidrs = ["203.0.113.0/24"]
  }
}

run "two_routers_in_two_azs" {
  command = plan

  assert {
    condition     = length(aws_autoscaling_group.router) == 2 && length(aws_network_interface.router) == 2
    error_message = "Two router slots, each with a fixed interface."
  }

  assert {
    condition     = aws_network_interface.router[0].subnet_id != aws_network_interface.router[1].subnet_id
    error_message = "The two routers sit in different subnets."
  }

  assert {
    condition     = alltrue([for g in aws_autoscaling_group.router : g.min_size == 1 && g.max_size == 1 && g.health_check_type == "ELB"])
    error_message = "Each slot is a one-instance on-demand group checked by the load balancer."
  }
}

run "load_balancer" {
  command = plan

  assert {
    condition     = aws_lb_target_group.router.health_check[0].path == "/healthz" && aws_lb_target_group.router.port == 8080
    error_message = "The load balancer checks /healthz on port 8080."
  }

  assert {
    condition     = aws_lb.this.idle_timeout >= 600
    error_message = "The idle timeout covers long prefills and streams."
  }

  assert {
    condition     = aws_lb.this.drop_invalid_header_fields
    error_message = "Invalid headers are dropped."
  }

  assert {
    condition     = length(aws_lb_listener.http) == 1 && length(aws_lb_listener.https) == 0
    error_message = "Without a certificate there is one HTTP listener."
  }
}

run "https_with_certificate" {
  command = plan

  variables {
    load_balancer = {
      subnet_ids      = ["subnet-0ccccccccccccccccc", "subnet-0ddddddddddddddddd"]
      allowed_cidrs   = ["203.0.113.0/24"]
      certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/abc"
    }
  }

  assert {
    condition     = length(aws_lb_listener.https) == 1 && length(aws_lb_listener.http_redirect) == 1 && length(aws_lb_listener.http) == 0
    error_message = "With a certificate: HTTPS, and HTTP redirects."
  }
}

run "node_token_is_secure_string" {
  command = plan

  assert {
    condition     = aws_ssm_parameter.node_token.type == "SecureString" && aws_ssm_parameter.node_token.name == "/spotrelay/llm/node-token"
    error_message = "The node token is an SSM SecureString."
  }
}
