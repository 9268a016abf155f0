# Tests of the router module against a mocked AWS provider: apply creates
# nothing, computed values are mocked. Run in `make tf-validate` with the
# machine's AWS provider (tests/tfshim/tfreal.py); the write-only AUTH token
# of the cache is asserted in write_only.tftest.hcl.

mock_provider "aws" {
  source = "../../tests/mocks/aws" # shared mocked values
}

run "one_multi_az_group" {
  command = apply

  assert {
    condition     = aws_autoscaling_group.router.desired_capacity == 2 && length(aws_autoscaling_group.router.vpc_zone_identifier) == 2
    error_message = "Two routers in one group over both subnets."
  }

  assert {
    condition     = aws_autoscaling_group.router.health_check_type == "ELB" && toset(aws_autoscaling_group.router.target_group_arns) == toset([aws_lb_target_group.routers["public"].arn, aws_lb_target_group.routers["heartbeat"].arn]) && aws_lb_target_group.routers["public"].arn != aws_lb_target_group.routers["heartbeat"].arn
    error_message = "Routers are checked by, and registered with, both load balancers."
  }

  assert {
    condition     = aws_autoscaling_group.router.instance_refresh[0].preferences[0].min_healthy_percentage >= 50
    error_message = "A rolling refresh keeps at least half the routers healthy."
  }
}

run "internal_by_default" {
  command = apply

  assert {
    condition     = aws_lb.this.internal && aws_lb.heartbeat.internal
    error_message = "Both load balancers are internal by default."
  }

  assert {
    condition     = toset(keys(aws_lb_listener.not_found)) == toset(["http", "heartbeat"]) && alltrue([for l in aws_lb_listener.not_found : l.default_action[0].type == "fixed-response" && l.default_action[0].fixed_response[0].status_code == "404"])
    error_message = "The public (plain HTTP) and the heartbeat listener answer 404 by default."
  }

  assert {
    condition     = output.heartbeat_url == "http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"
    error_message = "Agents register with the internal load balancer."
  }

  assert {
    condition     = aws_lb_target_group.routers["heartbeat"].port == 8081 && aws_lb_target_group.routers["public"].port == 8080
    error_message = "The heartbeat endpoint reaches the routers' control listener, clients their data port."
  }

  assert {
    condition     = toset(flatten([for k, r in aws_lb_listener_rule.forward : [for c in r.condition : [for pp in c.path_pattern : pp.values]] if startswith(k, "api")])) == toset(["/v1/*", "/healthz", "/pooling", "/classify", "/score", "/rerank", "/v2/rerank", "/tokenize", "/detokenize", "/version", "/health", "/load", "/tokenizer_info", "/ping"]) && alltrue([for k, r in aws_lb_listener_rule.forward : r.action[0].target_group_arn == aws_lb_target_group.routers["public"].arn if startswith(k, "api")])
    error_message = "The public listener forwards the public paths only."
  }

  assert {
    condition     = alltrue([for r in aws_lb_listener_rule.forward : length(flatten([for c in r.condition : [for pp in c.path_pattern : pp.values]])) <= 5])
    error_message = "Each listener rule matches at most five paths (the ALB's limit)."
  }

  assert {
    condition     = toset(flatten([for c in aws_lb_listener_rule.forward["control"].condition : [for pp in c.path_pattern : pp.values]])) == toset(["/nodes", "/nodes/*", "/instances/*", "/healthz", "/readyz"]) && aws_lb_listener_rule.forward["control"].action[0].target_group_arn == aws_lb_target_group.routers["heartbeat"].arn
    error_message = "The heartbeat listener forwards the control plane only."
  }
}

run "heartbeat_reachable_from_agents_only" {
  command = apply

  assert {
    condition     = toset([for k, r in aws_vpc_security_group_ingress_rule.link : k if r.security_group_id == module.security_group["heartbeat"].id]) == toset(["agents0_to_heartbeat"])
    error_message = "Only the GPU nodes' security group reaches the heartbeat endpoint."
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.link["agents0_to_heartbeat"].referenced_security_group_id == "sg-0123456789abcdef0" && aws_vpc_security_group_ingress_rule.link["agents0_to_heartbeat"].from_port == 8081
    error_message = "Agents reach the heartbeat listener's port."
  }

  assert {
    condition     = aws_vpc_security_group_egress_rule.link["agents0_to_heartbeat"].security_group_id == "sg-0123456789abcdef0"
    error_message = "The agents' group may send heartbeats to the endpoint."
  }

  assert {
    condition     = length(module.cidr_ingress["heartbeat_from_operators"].rules) == 0
    error_message = "No CIDR reaches it by default."
  }

  assert {
    condition     = toset([for k, r in aws_vpc_security_group_ingress_rule.link : r.referenced_security_group_id if r.security_group_id == module.security_group["registry"].id]) == toset([module.security_group["router"].id])
    error_message = "The registry is reachable from the routers only."
  }

  assert {
    condition     = toset([for k, r in aws_vpc_security_group_ingress_rule.link : r.from_port if r.security_group_id == module.security_group["router"].id]) == toset([8080, 8081])
    error_message = "Routers admit the public load balancer on the data port and the heartbeat endpoint on the control port."
  }

  assert {
    condition     = !contains(keys(aws_vpc_security_group_ingress_rule.link), "routers_to_nodes0")
    error_message = "The engine's ingress belongs to the gpu-pool module."
  }
}

run "ami_resolved_at_plan" {
  command = plan

  assert {
    condition     = module.launch_template.launch_template.image_id == "ami-0fedcba9876543210" && module.launch_template.ami_ssm_parameter == "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    error_message = "The router AMI comes from its SSM parameter at plan time, not resolve:ssm: at launch (no mixed builds in one group)."
  }
}

run "capacity_controller_reaches_the_control_endpoint_only" {
  command = apply

  variables {
    control_client_security_group_ids = ["sg-0cccccccccccccccc"]
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.link["controller0_to_heartbeat"].security_group_id == module.security_group["heartbeat"].id && aws_vpc_security_group_ingress_rule.link["controller0_to_heartbeat"].referenced_security_group_id == "sg-0cccccccccccccccc" && aws_vpc_security_group_ingress_rule.link["controller0_to_heartbeat"].from_port == 8081
    error_message = "The controller's own group is admitted to the internal control endpoint."
  }

  assert {
    condition     = aws_vpc_security_group_egress_rule.link["controller0_to_heartbeat"].security_group_id == "sg-0cccccccccccccccc" && aws_vpc_security_group_egress_rule.link["controller0_to_heartbeat"].to_port == 8081
    error_message = "The controller's group may leave for that endpoint (its egress kept in step with the ingress)."
  }

  assert {
    condition     = !anytrue([for k, r in aws_vpc_security_group_egress_rule.link : r.referenced_security_group_id == "sg-0cccccccccccccccc"])
    error_message = "The routers send no inference traffic to the controller's group."
  }
}

run "registry_private_tls_auth" {
  command = apply

  assert {
    condition     = aws_elasticache_replication_group.registry.engine == "valkey" && aws_elasticache_replication_group.registry.transit_encryption_enabled && aws_elasticache_replication_group.registry.transit_encryption_mode == "required"
    error_message = "Valkey with in-transit encryption required."
  }

  assert {
    condition     = aws_elasticache_replication_group.registry.auth_token_update_strategy == null
    error_message = "No update strategy: CreateReplicationGroup takes none, and the provider refuses one without the stored auth_token (rotation uses ElastiCache's default, ROTATE)."
  }

  assert {
    condition     = aws_elasticache_replication_group.registry.multi_az_enabled && aws_elasticache_replication_group.registry.automatic_failover_enabled
    error_message = "Two cache nodes fail over across AZs."
  }
}

run "secrets_not_in_state" {
  command = apply

  assert {
    condition     = aws_ssm_parameter.node_token.type == "SecureString" && aws_ssm_parameter.node_token.value_wo_version == 1
    error_message = "The node token is a write-only SecureString."
  }

  assert {
    condition     = aws_ssm_parameter.registry_auth_token.value_wo_version == 1 && aws_ssm_parameter.registry_auth_token.name == "/spotrelay/llm/redis-auth-token"
    error_message = "The registry token is a write-only SecureString."
  }
}

run "egress_allow_list" {
  command = apply

  assert {
    condition     = alltrue([for r in module.security_group["router"].egress_rules : r.ip_protocol != "-1"])
    error_message = "No all-protocol egress."
  }

  assert {
    condition     = module.security_group["router"].egress_rules["https"].from_port == 443
    error_message = "HTTPS by default."
  }

  assert {
    condition     = aws_vpc_security_group_egress_rule.link["routers_to_nodes0"].from_port == 8000 && aws_vpc_security_group_egress_rule.link["routers_to_nodes0"].referenced_security_group_id == "sg-0123456789abcdef0"
    error_message = "Routers reach the engine port on the GPU nodes."
  }
}

# Inside the mocked VPC (10.0.0.0/16): the module hands the VPC's blocks to
# the config module, whose tests reject networks outside them.
run "metrics_inside_the_vpc" {
  command = apply

  variables {
    monitoring_cidrs = ["10.0.50.0/24"]
  }

  assert {
    condition     = module.cidr_ingress["router_metrics"].rules["10.0.50.0/24"].from_port == 8081 && module.cidr_ingress["router_metrics"].rules["10.0.50.0/24"].security_group_id == module.security_group["router"].id
    error_message = "Prometheus inside the VPC scrapes the routers' control port."
  }
}

run "internet_facing_needs_certificate" {
  command = plan

  variables {
    load_balancer = {
      subnet_ids    = ["subnet-0ccccccccccccccccc", "subnet-0ddddddddddddddddd"]
      internal      = false
      allowed_cidrs = ["203.0.113.0/24"]
    }
  }

  expect_failures = [var.load_balancer]
}

run "internet_facing_with_certificate_and_keys" {
  command = apply

  variables {
    api_keys_parameter = "/spotrelay/llm/api-keys"
    load_balancer = {
      subnet_ids      = ["subnet-0ccccccccccccccccc", "subnet-0ddddddddddddddddd"]
      internal        = false
      allowed_cidrs   = ["203.0.113.0/24"]
      certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/abc"
    }
  }

  assert {
    condition     = toset(keys(aws_lb_listener.not_found)) == toset(["https", "heartbeat"]) && aws_lb_listener.not_found["https"].certificate_arn == "arn:aws:acm:us-east-1:123456789012:certificate/abc" && length(aws_lb_listener.http_redirect) == 1
    error_message = "With a certificate: HTTPS, and HTTP redirects."
  }

  assert {
    condition     = !aws_lb.this.internal
    error_message = "Internet-facing when asked, with TLS."
  }
}

run "load_balancer_subnets_are_trusted_proxies_and_nothing_is_uncapped" {
  command = apply

  assert {
    condition     = tolist(module.config.router_settings.server.trusted_proxies) == tolist(["10.0.1.0/24"])
    error_message = "The routers trust X-Forwarded-For from the load balancers' subnets (mocked 10.0.1.0/24)."
  }

  assert {
    condition     = length(module.config.router_settings.server.connection_cap_exempt) == 0
    error_message = "No network (never the whole VPC) is exempt from the per-address cap."
  }
}
