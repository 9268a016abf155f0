# spotrelay routers: one multi-AZ Auto Scaling group of on-demand routers
# sharing their node registry in ElastiCache (Valkey). Clients reach them
# through the public load balancer (the data plane only); agents heartbeat through an
# internal load balancer that only the GPU nodes' security groups can reach,
# so the GPU nodes know one address whatever the number of routers.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

# The load balancers' subnets: the client ALB's and the heartbeat ALB's (in
# the routers' subnets). Their addresses are the routers' trusted proxies,
# whose X-Forwarded-For names the client the per-address cap counts.
data "aws_subnet" "load_balancer" {
  for_each = toset(concat(var.load_balancer.subnet_ids, var.subnet_ids))
  id       = each.value
}

locals {
  # id is the region's name in every provider release (name is deprecated in
  # 6.x, region is new in 6.x); the offline check runs on 5.100.
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.id
  account_id = data.aws_caller_identity.current.account_id
  tags       = module.config.tags
  https      = var.load_balancer.certificate_arn != null
  lb_port    = local.https ? 443 : 80

  api_keys_parameter_arn = (
    var.api_keys_parameter == null ? null :
    startswith(var.api_keys_parameter, "arn:") ? var.api_keys_parameter :
    "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter${var.api_keys_parameter}"
  )
  heartbeat_url = "http://${aws_lb.heartbeat.dns_name}:${var.heartbeat.port}"
}

module "config" {
  source = "./modules/config"

  name               = var.name
  region             = local.region
  router_count       = var.router_count
  subnet_count       = length(var.subnet_ids)
  port               = var.port
  control_port       = var.control_port
  spotrelay_pip_spec = var.spotrelay_pip_spec
  spotrelay_sha256   = var.spotrelay_sha256
  api_keys_parameter = var.api_keys_parameter
  internet_facing    = !var.load_balancer.internal
  refresh            = var.refresh
  redis = {
    endpoint = aws_elasticache_replication_group.registry.primary_endpoint_address
    port     = var.registry.port
  }
  settings = merge(var.settings, {
    allowed_networks = coalesce(var.settings.allowed_networks, [data.aws_vpc.this.cidr_block])
    trusted_proxies = coalesce(
      var.settings.trusted_proxies, distinct([for s in data.aws_subnet.load_balancer : s.cidr_block])
    )
    connection_cap_exempt = coalesce(var.settings.connection_cap_exempt, [])
  })
  load_balancer_idle_timeout = var.load_balancer.idle_timeout
  vpc_cidrs                  = [for a in data.aws_vpc.this.cidr_block_associations : a.cidr_block]
  monitoring_cidrs           = var.monitoring_cidrs
  tags                       = var.tags
}

# --- secrets: generated at apply, stored write-only (never in state or plan) ---
#
# Terraform's uuid() draws 128 bits from the operating system's CSPRNG per
# call; its hex digits (4 bits each) make the tokens. It is unknown at plan
# and new at every apply, but write-only arguments are sent only when their
# *_version changes, so a token changes exactly when its version is bumped.
# (Not ephemeral "random_password": that needs the hashicorp/random provider,
# which the offline checks cannot install, and mock providers cannot mock
# ephemeral resources; docs/architecture.md, deviations.)
locals {
  node_token = substr(join("", [
    for i in range(ceil(var.node_token_length / 32)) : replace(uuid(), "-", "")
  ]), 0, var.node_token_length)
  # ElastiCache AUTH tokens: 16-128 printable characters without @, " or /.
  registry_auth_token = join("", [for i in range(2) : replace(uuid(), "-", "")])
}

resource "aws_ssm_parameter" "node_token" {
  name             = module.config.parameters.node_token.name
  description      = module.config.parameters.node_token.description
  type             = module.config.parameters.node_token.type
  key_id           = var.kms_key_arn
  value_wo         = local.node_token
  value_wo_version = var.node_token_version
  tags             = local.tags
}

resource "aws_ssm_parameter" "registry_auth_token" {
  name             = module.config.parameters.redis_auth_token.name
  description      = module.config.parameters.redis_auth_token.description
  type             = module.config.parameters.redis_auth_token.type
  key_id           = var.kms_key_arn
  value_wo         = local.registry_auth_token
  value_wo_version = var.registry.auth_token_version
  tags             = local.tags
}

# --- the shared registry: ElastiCache (Valkey), private, TLS, AUTH ---------------

resource "aws_elasticache_subnet_group" "registry" {
  name        = "${var.name}-registry"
  description = "spotrelay router registry ${var.name}"
  subnet_ids  = var.subnet_ids
  tags        = local.tags
}

resource "aws_elasticache_replication_group" "registry" {
  #checkov:skip=CKV_AWS_31:The AUTH token is set through the write-only auth_token_wo (kept out of state), which this checkov check does not know; transit encryption is required.
  replication_group_id       = module.config.resource_names.registry
  description                = "spotrelay router registry ${var.name}: node heartbeats shared by every router"
  engine                     = "valkey"
  engine_version             = var.registry.engine_version
  node_type                  = var.registry.node_type
  num_cache_clusters         = var.registry.num_cache_clusters
  port                       = var.registry.port
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.registry.name
  security_group_ids         = [local.sg.registry]
  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token_wo              = local.registry_auth_token
  auth_token_wo_version      = var.registry.auth_token_version
  # No auth_token_update_strategy: CreateReplicationGroup takes none, and the
  # provider refuses one without the stored auth_token. A bumped
  # auth_token_version modifies the group with ElastiCache's default, ROTATE
  # (old and new token both valid until the routers have the new one).
  # Heartbeat state rebuilds itself within one TTL: no snapshots to keep.
  snapshot_retention_limit   = 0
  maintenance_window         = var.registry.maintenance_window
  auto_minor_version_upgrade = true
  apply_immediately          = true
  tags                       = local.tags
}

# --- security groups ---------------------------------------------------------------

module "security_group" {
  source   = "../shared/security-group"
  for_each = local.security_groups

  name         = "${var.name}-${each.key}"
  description  = each.value.description
  vpc_id       = var.vpc_id
  egress_rules = each.value.egress_rules
  tags         = local.tags
}

# CIDR blocks admitted to one port of a group, one rule per block.
module "cidr_ingress" {
  source   = "../shared/cidr-ingress"
  for_each = local.cidr_ingress

  security_group_id = local.sg[each.value.group]
  cidrs             = each.value.cidrs
  port              = each.value.port
  description       = each.value.description
  tags              = local.tags
}

locals {
  security_groups = {
    lb = {
      description  = "spotrelay public load balancer ${var.name}: clients in, routers out"
      egress_rules = {}
    }
    heartbeat = {
      description  = "spotrelay heartbeat endpoint ${var.name}: GPU node agents in, routers out"
      egress_rules = {}
    }
    # The routers' own allow-list; the links below open the rest.
    router = {
      description  = "spotrelay routers ${var.name}: from the two load balancers"
      egress_rules = var.egress_rules
    }
    registry = {
      description  = "spotrelay registry ${var.name}: reachable from the routers only"
      egress_rules = {}
    }
  }
  sg = { for k, m in module.security_group : k => m.id }

  cidr_ingress = {
    lb_clients = {
      group       = "lb", cidrs = var.load_balancer.allowed_cidrs, port = local.lb_port
      description = "OpenAI-compatible API from client network %s"
    }
    lb_redirect = {
      group       = "lb", cidrs = local.https ? var.load_balancer.allowed_cidrs : [], port = 80
      description = "HTTP from %s, redirected to HTTPS"
    }
    heartbeat_from_operators = {
      group       = "heartbeat", cidrs = var.heartbeat.allowed_cidrs, port = var.heartbeat.port
      description = "spotrelay status and operators from %s"
    }
    # Checked to lie inside the VPC by the config module (/metrics is VPC-only).
    router_metrics = {
      group       = "router", cidrs = module.config.monitoring_cidrs, port = var.control_port
      description = "Prometheus scrapes /metrics on the control port from %s (inside the VPC)"
    }
  }
}

# --- who reaches whom between the parts: one egress rule on the source group
# and one ingress rule on the destination group per link. Rule descriptions
# take a-z A-Z 0-9 space and ._-:/()#,@[]+=&;{}!$* only (no apostrophes). ----

locals {
  links = merge(
    {
      lb_to_routers = {
        from = local.sg.lb, to = local.sg.router, port = var.port, egress_only = false
        what = "client requests from the public load balancer to the routers"
      }
      heartbeat_to_routers = {
        from = local.sg.heartbeat, to = local.sg.router, port = var.control_port, egress_only = false
        what = "heartbeats and health checks from the internal load balancer to the router control port"
      }
      routers_to_registry = {
        from = local.sg.router, to = local.sg.registry, port = var.registry.port, egress_only = false
        what = "the shared node registry of the routers (Valkey over TLS)"
      }
    },
    # The GPU nodes' groups: agents reach the heartbeat endpoint (both rules
    # here); routers reach the engine (the gpu-pool module adds the ingress).
    { for i, sg in var.agent_security_group_ids : "agents${i}_to_heartbeat" => {
      from = sg, to = local.sg.heartbeat, port = var.heartbeat.port, egress_only = false
      what = "agent heartbeats from the GPU nodes to the internal endpoint"
    } },
    # The capacity controller: the same endpoint, no inference traffic.
    { for i, sg in var.control_client_security_group_ids : "controller${i}_to_heartbeat" => {
      from = sg, to = local.sg.heartbeat, port = var.heartbeat.port, egress_only = false
      what = "drains from the capacity controller to the internal endpoint"
    } },
    { for i, sg in var.agent_security_group_ids : "routers_to_nodes${i}" => {
      from = local.sg.router, to = sg, port = var.node_port, egress_only = true
      what = "inference requests from the routers to the engine on the GPU nodes"
    } },
  )
}

resource "aws_vpc_security_group_egress_rule" "link" {
  for_each = local.links

  security_group_id            = each.value.from
  description                  = substr("To: ${each.value.what}", 0, 255)
  referenced_security_group_id = each.value.to
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "link" {
  for_each = { for k, l in local.links : k => l if !l.egress_only }

  security_group_id            = each.value.to
  description                  = substr("From: ${each.value.what}", 0, 255)
  referenced_security_group_id = each.value.from
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  tags                         = local.tags
}

# --- identity -------------------------------------------------------------------

module "instance_role" {
  source = "../shared/instance-role"

  name_prefix        = "${substr(var.name, 0, 30)}-router-"
  description        = "spotrelay routers ${var.name}"
  policy_name_prefix = "spotrelay-router-"
  statements = [{
    sid     = "ReadRouterSecrets"
    actions = ["ssm:GetParameter"]
    resources = compact([
      aws_ssm_parameter.node_token.arn,
      aws_ssm_parameter.registry_auth_token.arn,
      local.api_keys_parameter_arn,
    ])
  }]
  package_s3_object   = module.config.package_s3_object
  secrets_kms_key_arn = var.kms_key_arn
  managed_policies    = var.enable_ssm_session_manager ? { ssm_core = "AmazonSSMManagedInstanceCore" } : {}
  partition           = local.partition
  region              = local.region
  tags                = local.tags
}

# --- instances: one launch template, one multi-AZ group ------------------------------

module "launch_template" {
  source = "../shared/launch-template"

  name_prefix          = "${var.name}-router-"
  description          = "spotrelay router ${var.name}"
  ami_id               = var.ami_id
  ami_ssm_parameter    = var.ami_ssm_parameter
  instance_type        = var.instance_type
  user_data_base64     = module.config.user_data_base64
  instance_profile_arn = module.instance_role.instance_profile_arn
  security_group_ids   = [local.sg.router]
  volumes              = [{ device_name = "/dev/xvda", size_gib = var.root_volume_size_gib }]
  kms_key_arn          = var.kms_key_arn
  tags                 = local.tags
  instance_tags        = merge(local.tags, { Name = "${var.name}-router" })
}

resource "aws_autoscaling_group" "router" {
  name                      = "${var.name}-router"
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = var.router_count
  max_size                  = var.router_count * 2
  desired_capacity          = var.router_count
  health_check_type         = "ELB"
  health_check_grace_period = 600
  target_group_arns         = [for g in aws_lb_target_group.routers : g.arn]

  launch_template {
    id      = module.launch_template.id
    version = module.launch_template.latest_version
  }

  # A new launch template version rolls the group: replacements launch first
  # and at least min_healthy_percentage (>= 50) of the routers stay in
  # service. Routers keep no state of their own (the registry is shared).
  instance_refresh {
    strategy = module.config.instance_refresh.strategy
    preferences {
      min_healthy_percentage = module.config.instance_refresh.min_healthy_percentage
      max_healthy_percentage = module.config.instance_refresh.max_healthy_percentage
      instance_warmup        = module.config.instance_refresh.instance_warmup
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${var.name}-router" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  depends_on = [module.instance_role]
}

# --- load balancers: the public one serves the data plane and /healthz only,
# the internal heartbeat endpoint /nodes*, /instances/*, /healthz, /readyz ----------

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_20:HTTP redirects to HTTPS whenever certificate_arn is set, which is required for an internet-facing load balancer; an internal one without a certificate has no HTTPS to redirect to.
  name                       = module.config.resource_names.public_lb
  load_balancer_type         = "application"
  internal                   = var.load_balancer.internal
  subnets                    = var.load_balancer.subnet_ids
  security_groups            = [local.sg.lb]
  idle_timeout               = module.config.load_balancer_idle_timeout
  drop_invalid_header_fields = true
  enable_deletion_protection = var.load_balancer.deletion_protection
  tags                       = local.tags

  dynamic "access_logs" {
    for_each = var.load_balancer.access_logs_bucket == null ? [] : [var.load_balancer.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = var.name
      enabled = true
    }
  }
}

# An internal endpoint in the routers' subnets: agents and the capacity
# controller reach it, clients never do.
resource "aws_lb" "heartbeat" {
  #checkov:skip=CKV_AWS_150:Internal endpoint recreated by Terraform with the deployment; deletion protection would block `spotrelay down`.
  #checkov:skip=CKV2_AWS_20:Internal-only HTTP endpoint inside the VPC (security-group restricted); there is no HTTPS listener to redirect to.
  #checkov:skip=CKV_AWS_91:Heartbeats every 2 s per node would dominate access logs; the routers log registrations themselves.
  name                       = module.config.resource_names.heartbeat_lb
  load_balancer_type         = "application"
  internal                   = true
  subnets                    = var.subnet_ids
  security_groups            = [local.sg.heartbeat]
  drop_invalid_header_fields = true
  tags                       = local.tags
}

# The routers behind each load balancer: their data port behind the public
# one, their control port behind the heartbeat endpoint.
resource "aws_lb_target_group" "routers" {
  #checkov:skip=CKV_AWS_378:TLS terminates at the public load balancer, and the heartbeat endpoint is internal; both hops to the routers stay inside the VPC between security-group restricted endpoints.
  for_each = {
    public    = { name_prefix = "spr-", port = var.port, deregistration_delay = var.target_deregistration_delay }
    heartbeat = { name_prefix = "sph-", port = var.control_port, deregistration_delay = 30 }
  }

  name_prefix          = each.value.name_prefix
  port                 = each.value.port
  protocol             = "HTTP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = each.value.deregistration_delay
  tags                 = local.tags

  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  lifecycle {
    create_before_destroy = true
  }
}

# The listeners that answer the fixed 404 to every path no rule forwards: the
# public one (HTTPS with a certificate, else HTTP) and the heartbeat one.
resource "aws_lb_listener" "not_found" {
  #checkov:skip=CKV_AWS_2:Plain HTTP only on the internal heartbeat endpoint (reachable from the GPU nodes' security groups and heartbeat.allowed_cidrs) and on an internal public load balancer without a certificate (validated: an internet-facing one requires certificate_arn).
  #checkov:skip=CKV_AWS_103:TLS settings apply to the HTTPS listener, created when certificate_arn is set; the HTTP ones stay inside the VPC.
  for_each = { for k, l in {
    https     = { on = local.https, load_balancer_arn = aws_lb.this.arn, port = 443, protocol = "HTTPS" }
    http      = { on = !local.https, load_balancer_arn = aws_lb.this.arn, port = 80, protocol = "HTTP" }
    heartbeat = { on = true, load_balancer_arn = aws_lb.heartbeat.arn, port = var.heartbeat.port, protocol = "HTTP" }
  } : k => l if l.on }

  load_balancer_arn = each.value.load_balancer_arn
  port              = each.value.port
  protocol          = each.value.protocol
  ssl_policy        = each.key == "https" ? var.load_balancer.ssl_policy : null
  certificate_arn   = each.key == "https" ? var.load_balancer.certificate_arn : null
  tags              = local.tags

  default_action {
    type = "fixed-response"
    fixed_response {
      content_type = module.config.not_found.content_type
      status_code  = module.config.not_found.status_code
      message_body = module.config.not_found.message_body
    }
  }
}

# With a certificate, plain HTTP on the public load balancer redirects.
resource "aws_lb_listener" "http_redirect" {
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"
  tags              = local.tags

  default_action {
    type = "redirect"
    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

# What each listener forwards to the routers (module.config's path lists): the
# public listener the data plane, one rule per five paths (the ALB's limit per
# rule), the heartbeat listener the control plane.
resource "aws_lb_listener_rule" "forward" {
  for_each = merge(
    { for i, paths in module.config.public_path_rules : "api${i}" => {
      listener = local.https ? "https" : "http", routers = "public", priority = 10 + i, paths = paths
    } },
    { control = { listener = "heartbeat", routers = "heartbeat", priority = 10, paths = module.config.control_paths } },
  )

  listener_arn = aws_lb_listener.not_found[each.value.listener].arn
  priority     = each.value.priority
  tags         = local.tags

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.routers[each.value.routers].arn
  }

  condition {
    path_pattern {
      values = each.value.paths
    }
  }
}
