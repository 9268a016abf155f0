# A complete spotrelay deployment in an existing VPC: a group of routers
# sharing an ElastiCache registry behind an Application Load Balancer, and
# one spot GPU pool serving one model. The GPU nodes know one router address,
# the internal heartbeat endpoint, whatever router_count is.

locals {
  # On every resource (default_tags) and passed to the modules too: provider
  # default tags never reach what an Auto Scaling group launches, so the
  # modules propagate them to the instances and their volumes (cost tags).
  tags = merge({ Project = "spotrelay", Deployment = var.name }, var.tags)
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }

  # The capacity controller keeps its state in the GPU group's tags
  # (spotrelay:fallback-*). Tags Terraform does not manage may be removed by
  # an apply; these are the controller's, so Terraform must not see them.
  ignore_tags {
    key_prefixes = ["spotrelay:fallback-"]
  }
}

module "router" {
  source = "../../modules/router"

  name                     = var.name
  vpc_id                   = var.vpc_id
  subnet_ids               = var.private_subnet_ids
  router_count             = var.router_count
  instance_type            = var.router_instance_type
  spotrelay_pip_spec       = local.spotrelay_package.pip_spec
  spotrelay_sha256         = local.spotrelay_package.sha256
  api_keys_parameter       = var.api_keys_parameter
  node_token_version       = var.node_token_version
  agent_security_group_ids = [module.gpu_pool.security_group_id]
  # The capacity controller's own group (empty when it is off).
  control_client_security_group_ids = module.gpu_pool.controller_security_group_ids
  # The port the engine listens on, from the pool (one setting, engine_port).
  node_port           = module.gpu_pool.engine_port
  tags                = local.tags
  monitoring_cidrs    = var.monitoring_cidrs
  heartbeat           = { allowed_cidrs = var.operator_cidrs }
  alarms_enabled      = var.alarms_enabled
  alarm_sns_topic_arn = var.alarm_sns_topic_arn

  load_balancer = {
    subnet_ids      = var.alb_internal ? var.private_subnet_ids : var.public_subnet_ids
    internal        = var.alb_internal
    allowed_cidrs   = var.allowed_cidrs
    certificate_arn = var.certificate_arn
  }
}

module "gpu_pool" {
  source = "../../modules/gpu-pool"

  name       = "${var.name}-gpu"
  vpc_id     = var.vpc_id
  subnet_ids = var.private_subnet_ids

  model          = var.model
  instance_types = var.instance_types
  scaling        = var.scaling
  vllm           = { version = var.vllm_version, port = var.engine_port }
  spotrelay      = local.spotrelay_package

  tags = local.tags

  router_url               = module.router.heartbeat_url
  router_security_group_id = module.router.security_group_id
  node_token_parameter_arn = module.router.node_token_parameter_arn

  model_params_billion  = var.model_params_billion
  model_gpu_memory_gib  = var.model_gpu_memory_gib
  instance_requirements = var.instance_requirements
  model_s3_uri          = var.model_s3_uri
  model_s3_load         = var.model_s3_load
  ami_id                = var.gpu_ami_id
  scale_on_load         = var.scale_on_load
  on_demand_fallback    = var.on_demand_fallback
  interruption_queue    = var.interruption_queue
  alarms_enabled        = var.alarms_enabled
  alarm_sns_topic_arn   = var.alarm_sns_topic_arn
}
