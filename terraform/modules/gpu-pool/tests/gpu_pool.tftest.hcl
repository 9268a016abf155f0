# Plan-level tests of the whole gpu-pool module against a mocked AWS
# provider. They need the hashicorp/aws provider schema, so they run in
# `make tf-validate` where the provider can be downloaded; the pure logic is
# tested offline in modules/config/tests.

mock_provider "aws" {
  source = "../../tests/mocks/aws" # shared mocked values
}

run "launch_template_hardening" {
  command = plan

  assert {
    condition     = module.launch_template.launch_template.metadata_options[0].http_tokens == "required"
    error_message = "IMDSv2 must be required."
  }

  assert {
    condition     = module.launch_template.launch_template.metadata_options[0].http_put_response_hop_limit == 1
    error_message = "The IMDS hop limit must be 1."
  }

  assert {
    condition     = tostring(module.launch_template.launch_template.network_interfaces[0].associate_public_ip_address) == "false"
    error_message = "Nodes get no public IP."
  }

  assert {
    condition     = alltrue([for b in module.launch_template.launch_template.block_device_mappings : tostring(b.ebs[0].encrypted) == "true" && b.ebs[0].volume_type == "gp3"])
    error_message = "Root and model volumes are encrypted gp3."
  }

  assert {
    condition     = length(module.launch_template.launch_template.block_device_mappings) == 1
    error_message = "The root volume only: the instance-store NVMe holds the model, no EBS model volume is paid for."
  }

  assert {
    condition     = module.launch_template.launch_template.image_id == "ami-0fedcba9876543210" && module.launch_template.ami_ssm_parameter == "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
    error_message = "The AMI comes from the Deep Learning AMI SSM parameter, resolved at plan time (auto rollback needs an AMI id)."
  }
}

run "model_volume_without_instance_store" {
  command = plan

  variables {
    instance_store = false
  }

  assert {
    condition     = length(module.launch_template.launch_template.block_device_mappings) == 2 && one([for b in module.launch_template.launch_template.block_device_mappings : b.ebs[0].volume_size if b.device_name == "/dev/sdf"]) == 200
    error_message = "Without instance store the model gets a 200 GiB gp3 volume."
  }
}

run "mixed_instances_spot_pool" {
  command = plan

  assert {
    condition     = aws_autoscaling_group.node.mixed_instances_policy[0].instances_distribution[0].spot_allocation_strategy == "price-capacity-optimized"
    error_message = "Spot allocation is price-capacity-optimized."
  }

  assert {
    condition     = length(aws_autoscaling_group.node.mixed_instances_policy[0].launch_template[0].override) >= 4
    error_message = "At least 4 instance types by default."
  }

  assert {
    condition     = aws_autoscaling_group.node.capacity_rebalance && aws_autoscaling_group.node.max_size > aws_autoscaling_group.node.desired_capacity
    error_message = "Capacity rebalance with max size headroom."
  }

  assert {
    condition     = aws_autoscaling_lifecycle_hook.node["terminate"].heartbeat_timeout <= 120 && aws_autoscaling_lifecycle_hook.node["terminate"].lifecycle_transition == "autoscaling:EC2_INSTANCE_TERMINATING"
    error_message = "The termination hook fires on termination, with a heartbeat of at most 120 s."
  }

  assert {
    condition     = length(aws_autoscaling_group.node.initial_lifecycle_hook) == 0
    error_message = "Hooks are separate resources, so edits apply after creation."
  }

  assert {
    condition     = toset([for o in aws_autoscaling_group.node.mixed_instances_policy[0].launch_template[0].override : split(".", o.instance_type)[0]]) == toset(["g6", "g5", "g6e"])
    error_message = "No g4dn (16 GiB) in the defaults for a 7B model."
  }
}

run "readiness_gate_and_rollout" {
  command = plan

  assert {
    condition     = aws_autoscaling_lifecycle_hook.node["launch"].lifecycle_transition == "autoscaling:EC2_INSTANCE_LAUNCHING" && aws_autoscaling_lifecycle_hook.node["launch"].default_result == "ABANDON" && aws_autoscaling_lifecycle_hook.node["launch"].heartbeat_timeout == 1200
    error_message = "A launch hook, ABANDON by default, sized for a cold start."
  }

  assert {
    condition     = aws_autoscaling_group.node.instance_maintenance_policy[0].min_healthy_percentage == 100 && aws_autoscaling_group.node.instance_maintenance_policy[0].max_healthy_percentage == 200
    error_message = "Replacements launch before old nodes go (100 % / 200 %)."
  }

  assert {
    condition     = aws_autoscaling_group.node.instance_refresh[0].preferences[0].auto_rollback && aws_autoscaling_group.node.instance_refresh[0].preferences[0].skip_matching && aws_autoscaling_group.node.instance_refresh[0].preferences[0].min_healthy_percentage == 100
    error_message = "Instance refresh keeps full capacity, skips matching nodes and rolls back on failure."
  }
}

run "attribute_based_instances" {
  command = plan

  variables {
    instance_requirements = {
      excluded_instance_types = ["g4dn*"]
    }
  }

  assert {
    condition     = one(aws_autoscaling_group.node.mixed_instances_policy[0].launch_template[0].override).instance_requirements[0].accelerator_total_memory_mib[0].min == 19328
    error_message = "Instance requirements ask for the model's GPU memory."
  }

  assert {
    condition     = one(aws_autoscaling_group.node.mixed_instances_policy[0].launch_template[0].override).instance_requirements[0].instance_generations == toset(["current"]) && one(aws_autoscaling_group.node.mixed_instances_policy[0].launch_template[0].override).instance_requirements[0].local_storage == "required"
    error_message = "Only current-generation types with local NVMe (the instance store holds the model) reach the group."
  }

  assert {
    condition     = aws_autoscaling_group.node.mixed_instances_policy[0].instances_distribution[0].on_demand_allocation_strategy == "lowest-price"
    error_message = "prioritized is not allowed with instance requirements."
  }
}

run "weights_from_s3" {
  command = plan

  variables {
    model_s3_uri = "s3://acme-models/qwen/"
  }

  assert {
    condition     = length(aws_iam_role_policy.model_s3) == 1
    error_message = "Nodes get read access to the model prefix."
  }
}

run "only_routers_reach_vllm" {
  command = plan

  assert {
    condition     = aws_vpc_security_group_ingress_rule.vllm_from_routers.referenced_security_group_id == "sg-0123456789abcdef0" && aws_vpc_security_group_ingress_rule.vllm_from_routers.from_port == 8000
    error_message = "vLLM's port is open to the routers' security group only."
  }
}

run "egress_allow_list" {
  command = plan

  assert {
    condition     = alltrue([for r in module.node_security_group.egress_rules : r.ip_protocol == "tcp"]) && toset([for r in module.node_security_group.egress_rules : r.from_port]) == toset([443, 80])
    error_message = "Nodes may leave on HTTPS and HTTP (apt) only by default; no all-protocol egress."
  }
}

run "explicit_ami_and_no_session_manager" {
  command = plan

  variables {
    ami_id                     = "ami-0123456789abcdef0"
    enable_ssm_session_manager = false
    volumes = {
      model_size_gib = 0
    }
  }

  assert {
    condition     = module.launch_template.launch_template.image_id == "ami-0123456789abcdef0" && module.launch_template.ami_ssm_parameter == null
    error_message = "An explicit AMI id wins (no SSM lookup)."
  }

  assert {
    condition     = !contains(keys(module.instance_role.managed_policy_arns), "ssm_core") && length(module.launch_template.launch_template.block_device_mappings) == 1
    error_message = "Optional pieces can be turned off."
  }
}

run "rejects_bad_subnet" {
  command = plan
  variables {
    subnet_ids = ["subnet-nothex!"]
  }
  expect_failures = [var.subnet_ids]
}

run "tags_reach_the_instances" {
  command = plan

  variables {
    tags = { CostCenter = "ml-inference" }
  }

  assert {
    condition     = anytrue([for t in aws_autoscaling_group.node.tag : t.key == "CostCenter" && t.value == "ml-inference" && t.propagate_at_launch])
    error_message = "Cost tags are propagated to the instances the group launches."
  }

  assert {
    condition     = alltrue([for s in module.launch_template.launch_template.tag_specifications : s.tags["CostCenter"] == "ml-inference"]) && toset([for s in module.launch_template.launch_template.tag_specifications : s.resource_type]) == toset(["instance", "volume", "network-interface"])
    error_message = "Instances, their volumes and interfaces carry the tags from launch."
  }
}
