# Spot GPU pool: one Auto Scaling group of vLLM nodes, each running the
# spotrelay agent. The pure logic (validation, sizes, tags, user data) lives
# in ./modules/config so it is tested offline; this file wires it to AWS.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  # id is the region's name in every provider release (name is deprecated in
  # 6.x, region is new in 6.x); the offline check runs on 5.100.
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.id
  account_id = data.aws_caller_identity.current.account_id

  asg_arn_pattern = "arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.name}"

  hf_token_parameter = var.model.hf_token_parameter
  hf_token_parameter_arn = (
    local.hf_token_parameter == null ? null :
    startswith(local.hf_token_parameter, "arn:") ? local.hf_token_parameter :
    "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter${local.hf_token_parameter}"
  )
  readable_parameters = compact([var.node_token_parameter_arn, local.hf_token_parameter_arn])

  tags = module.config.tags
}

module "config" {
  source = "./modules/config"

  name                 = var.name
  region               = local.region
  instance_types       = var.instance_types
  scaling              = var.scaling
  lifecycle_hook       = var.lifecycle_hook
  model                = var.model
  vllm                 = var.vllm
  spotrelay            = var.spotrelay
  router_url           = var.router_url
  node_token_parameter = var.node_token_parameter_arn
  volumes              = var.volumes
  cloudwatch           = module.capacity.agent_cloudwatch
  tags                 = merge({ Name = var.name }, var.tags)

  launch_hook              = var.launch_hook
  engine_unhealthy_after_s = var.engine_unhealthy_after_s
  model_gpu_memory_gib     = var.model_gpu_memory_gib
  model_params_billion     = var.model_params_billion
  model_bytes_per_param    = var.model_bytes_per_param
  model_kv_cache_fraction  = var.model_kv_cache_fraction
  instance_requirements    = var.instance_requirements
  extra_gpu_specs          = var.extra_gpu_specs
  model_s3_uri             = var.model_s3_uri
  model_s3_load            = var.model_s3_load
  instance_store           = var.instance_store
}

# --- network ----------------------------------------------------------------

# Egress is an allow-list (egress_rules); the router module adds the
# heartbeat rule to its internal endpoint.
module "node_security_group" {
  source = "../shared/security-group"

  name         = "${var.name}-node"
  description  = "spotrelay GPU nodes of ${var.name}: vLLM reachable from the routers only"
  vpc_id       = var.vpc_id
  egress_rules = var.egress_rules
  tags         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "vllm_from_routers" {
  security_group_id            = module.node_security_group.id
  description                  = "vLLM API from the spotrelay routers"
  referenced_security_group_id = var.router_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = var.vllm.port
  to_port                      = var.vllm.port
  tags                         = local.tags
}

# --- identity: least privilege ----------------------------------------------

module "instance_role" {
  source = "../shared/instance-role"

  name_prefix        = "${substr(var.name, 0, 32)}-node-"
  description        = "spotrelay GPU nodes of ${var.name}"
  policy_name_prefix = "spotrelay-node-"
  statements = [
    {
      sid = "CompleteOwnLifecycleActions"
      actions = [
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:RecordLifecycleActionHeartbeat",
      ]
      resources = [local.asg_arn_pattern]
    },
    # Self-healing: the agent marks its own instance Unhealthy; the ARN
    # pattern names this group only, so a node cannot touch any other group.
    {
      sid       = "MarkOwnInstanceUnhealthy"
      actions   = ["autoscaling:SetInstanceHealth"]
      resources = [local.asg_arn_pattern]
    },
    {
      sid       = "ReadNodeSecrets"
      actions   = ["ssm:GetParameter"]
      resources = local.readable_parameters
    },
  ]
  package_s3_object   = module.config.package_s3_object
  secrets_kms_key_arn = var.node_token_kms_key_arn
  secrets_kms_sid     = "DecryptNodeSecretsThroughSSM"
  managed_policies = merge(
    var.enable_ssm_session_manager ? { ssm_core = "AmazonSSMManagedInstanceCore" } : {},
    var.enable_cloudwatch_agent ? { cloudwatch_agent = "CloudWatchAgentServerPolicy" } : {},
  )
  partition = local.partition
  region    = local.region
  tags      = local.tags
}

# --- launch template ----------------------------------------------------------

module "launch_template" {
  source = "../shared/launch-template"

  name_prefix          = "${var.name}-"
  description          = "spotrelay GPU node: vLLM ${var.vllm.version} + agent, model ${module.config.served_model_name}"
  ami_id               = var.ami_id
  ami_ssm_parameter    = var.ami_ssm_parameter
  user_data_base64     = module.config.user_data_base64
  instance_profile_arn = module.instance_role.instance_profile_arn
  security_group_ids   = concat([module.node_security_group.id], var.additional_security_group_ids)
  # The root volume, and the model volume unless the instance store holds
  # the model (throughput and IOPS for loading the weights).
  volumes = concat(
    [{ device_name = var.root_device_name, size_gib = module.config.volumes.root_size_gib }],
    module.config.volumes.has_model_volume ? [{
      device_name = "/dev/sdf", size_gib = module.config.volumes.model_size_gib, throughput = 500, iops = 6000
    }] : [],
  )
  kms_key_arn   = var.kms_key_arn
  tags          = local.tags
  instance_tags = local.tags
}

# --- Auto Scaling group -------------------------------------------------------

resource "aws_autoscaling_group" "node" {
  name                      = var.name
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = module.config.scaling.min_size
  max_size                  = module.config.scaling.max_size
  desired_capacity          = module.config.scaling.desired_capacity
  capacity_rebalance        = var.capacity_rebalance
  health_check_type         = "EC2"
  health_check_grace_period = var.health_check_grace_period
  default_instance_warmup   = var.health_check_grace_period
  wait_for_capacity_timeout = var.wait_for_capacity_timeout
  termination_policies      = ["AllocationStrategy", "OldestLaunchTemplate", "Default"]
  # The group's 1-minute metrics (free) for the in-service alarm (alarms.tf).
  enabled_metrics = var.alarms_enabled ? ["GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances"] : []

  mixed_instances_policy {
    instances_distribution {
      # prioritized follows the instance_types order; AWS rejects it with
      # instance requirements, where lowest-price is the only choice.
      on_demand_allocation_strategy            = module.config.instance_requirements == null ? "prioritized" : "lowest-price"
      on_demand_base_capacity                  = module.config.scaling.on_demand_base_capacity
      on_demand_percentage_above_base_capacity = module.config.scaling.on_demand_percentage_above_base_capacity
      spot_allocation_strategy                 = module.config.scaling.spot_allocation_strategy
      # No spot_max_price: paying up to the on-demand price is what keeps
      # price-capacity-optimized from picking pools that are about to go.
    }

    launch_template {
      launch_template_specification {
        launch_template_id = module.launch_template.id
        version            = module.launch_template.latest_version
      }

      dynamic "override" {
        for_each = module.config.instance_overrides
        content {
          instance_type = override.value.instance_type
        }
      }

      dynamic "override" {
        for_each = module.config.instance_requirements == null ? [] : [module.config.instance_requirements]
        content {
          instance_requirements {
            instance_generations      = override.value.instance_generations
            local_storage             = override.value.local_storage
            accelerator_manufacturers = override.value.accelerator_manufacturers
            accelerator_types         = override.value.accelerator_types
            allowed_instance_types    = override.value.allowed_instance_types
            excluded_instance_types   = override.value.excluded_instance_types
            vcpu_count {
              min = override.value.vcpu_count.min
              max = override.value.vcpu_count.max
            }
            memory_mib {
              min = override.value.memory_mib.min
              max = override.value.memory_mib.max
            }
            accelerator_count {
              min = override.value.accelerator_count.min
              max = override.value.accelerator_count.max
            }
            accelerator_total_memory_mib {
              min = override.value.accelerator_total_memory_mib.min
            }
          }
        }
      }
    }
  }

  # Lifecycle hooks are separate resources (readiness.tf) so that edits apply
  # to an existing group.

  # Replacements (rebalance, scale-in, health) keep the group at 100 % of
  # ready capacity: a new node is launched (and passes the launch hook)
  # before the old one goes.
  instance_maintenance_policy {
    min_healthy_percentage = 100
    max_healthy_percentage = 200
  }

  # A new launch template version (vLLM, model, AMI) rolls out one launch
  # hook-gated replacement at a time; nodes already on it are skipped, and a
  # refresh that fails rolls back.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 200
      instance_warmup        = var.instance_refresh_warmup_s
      skip_matching          = true
      auto_rollback          = true
    }
  }

  dynamic "tag" {
    for_each = module.config.asg_tags
    content {
      key                 = tag.value.key
      value               = tag.value.value
      propagate_at_launch = tag.value.propagate_at_launch
    }
  }

  # desired_capacity and the on-demand base are initial values: once the group
  # exists, scaling (target tracking, the scale-in alarm, the operator) owns the
  # desired capacity and the capacity controller owns the base. Without this an
  # unrelated apply during a spot shortage would put the base back to its
  # configured value and retire the on-demand nodes that stand in for spot.
  # Changing them deliberately: docs/runbook.md "Changing the on-demand base or
  # the desired capacity" (with on_demand_fallback, the controller follows a
  # new scaling.on_demand_base_capacity by itself).
  lifecycle {
    ignore_changes = [
      desired_capacity,
      mixed_instances_policy[0].instances_distribution[0].on_demand_base_capacity,
    ]
  }

  depends_on = [module.instance_role]
}

# Without on_demand_fallback nothing follows a changed
# scaling.on_demand_base_capacity: say so at plan time instead of silently
# keeping the old base (a check warns, it never blocks an apply).
check "on_demand_base_follows_the_variable" {
  assert {
    condition = (
      module.capacity.enabled.fallback ||
      one(aws_autoscaling_group.node.mixed_instances_policy[0].instances_distribution[*].on_demand_base_capacity) == module.config.scaling.on_demand_base_capacity
    )
    error_message = "The group's on-demand base differs from scaling.on_demand_base_capacity (${module.config.scaling.on_demand_base_capacity}), and Terraform does not change it on an existing group. Set it with the command in docs/runbook.md \"Changing the on-demand base or the desired capacity\", or enable on_demand_fallback so the controller follows the variable."
  }
}
