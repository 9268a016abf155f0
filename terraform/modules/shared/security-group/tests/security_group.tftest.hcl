# The egress allow-list's checks, for every caller (the GPU nodes', the capacity
# controller's and the routers' groups), against a mocked AWS provider
# (`make tf-validate`).

mock_provider "aws" {
  source = "../../../tests/mocks/aws" # shared mocked values
}

variables {
  name        = "llm-router"
  description = "spotrelay routers llm: from the two load balancers"
  vpc_id      = "vpc-0123456789abcdef0"
  egress_rules = {
    https = {
      description = "HTTPS: PyPI and the AWS APIs"
      from_port   = 443
      to_port     = 443
      cidr_ipv4   = "0.0.0.0/0"
    }
    s3 = {
      description    = "HTTPS to S3 through its gateway endpoint"
      from_port      = 443
      to_port        = 443
      prefix_list_id = "pl-63a5400a"
    }
  }
}

run "one_rule_per_entry" {
  command = plan

  assert {
    condition     = aws_security_group.this.name_prefix == "llm-router-" && aws_security_group.this.tags.Name == "llm-router"
    error_message = "The group is named after its Name tag, with a unique suffix."
  }

  assert {
    condition     = toset(keys(aws_vpc_security_group_egress_rule.allowed)) == toset(["https", "s3"]) && aws_vpc_security_group_egress_rule.allowed["s3"].prefix_list_id == "pl-63a5400a" && aws_vpc_security_group_egress_rule.allowed["https"].ip_protocol == "tcp"
    error_message = "One rule per entry, TCP by default, to a CIDR block or a prefix list."
  }
}

run "rejects_all_protocol_egress" {
  command = plan

  variables {
    egress_rules = {
      all = {
        description = "everything, everywhere"
        ip_protocol = "-1"
        from_port   = 1
        to_port     = 65535
        cidr_ipv4   = "0.0.0.0/0"
      }
    }
  }
  expect_failures = [var.egress_rules]
}

run "rejects_egress_without_destination" {
  command = plan

  variables {
    egress_rules = {
      https = {
        description = "HTTPS to somewhere"
        from_port   = 443
        to_port     = 443
      }
    }
  }
  expect_failures = [var.egress_rules]
}

run "rejects_undocumented_egress" {
  command = plan

  variables {
    egress_rules = {
      https = {
        description = "x"
        from_port   = 443
        to_port     = 443
        cidr_ipv4   = "0.0.0.0/0"
      }
    }
  }
  expect_failures = [var.egress_rules]
}

run "rejects_description_the_ec2_api_refuses" {
  command = plan

  variables {
    egress_rules = {
      https = {
        description = "HTTPS to the proxy's address"
        from_port   = 443
        to_port     = 443
        cidr_ipv4   = "10.0.0.10/32"
      }
    }
  }
  expect_failures = [var.egress_rules]
}

run "rejects_egress_to_a_bad_cidr" {
  command = plan

  variables {
    egress_rules = {
      https = {
        description = "HTTPS to the proxy"
        from_port   = 443
        to_port     = 443
        cidr_ipv4   = "10.0.0.300/32"
      }
    }
  }
  expect_failures = [var.egress_rules]
}
