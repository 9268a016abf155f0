# spotrelay routers: N on-demand instances behind an Application Load
# Balancer. Each router keeps its own in-memory node registry, so every agent
# heartbeats every router directly: each router slot is a one-instance Auto
# Scaling group that attaches a fixed network interface at boot, giving the
# agents a stable address per router (the node_urls output).

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region
  account_id = data.aws_caller_identity.current.account_id
  image_id   = var.ami_id != null ? var.ami_id : "resolve:ssm:${var.ami_ssm_parameter}"
  tags       = module.config.tags
  https      = var.load_balancer.certificate_arn != null
  lb_port    = local.https ? 443 : 80
  node_urls  = [for eni in aws_network_interface.router : "http://${eni.private_ip}:${var.port}"]
}

module "config" {
  source = "./modules/config"

  name                  = var.name
  region                = local.region
  router_count          = var.router_count
  subnet_count          = length(var.subnet_ids)
  network_interface_ids = aws_network_interface.router[*].id
  port                  = var.port
  node_token_parameter  = aws_ssm_parameter.node_token.arn
  spotrelay_pip_spec    = var.spotrelay_pip_spec
  settings = merge(var.settings, {
    allowed_networks = coalesce(var.settings.allowed_networks, [data.aws_vpc.this.cidr_block])
  })
  load_balancer_idle_timeout = var.load_balancer.idle_timeout
  tags                       = var.tags
}

# --- node token ---------------------------------------------------------------

resource "random_password" "node_token" {
  length  = var.node_token_length
  special = false
}

resource "aws_ssm_parameter" "node_token" {
  #checkov:skip=CKV_AWS_337:The key is configurable (kms_key_arn); without one the AWS managed key for SSM encrypts the SecureString.
  name        = "/spotrelay/${var.name}/node-token"
  description = "Bearer token spotrelay agents present to the routers"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = random_password.node_token.result
  tags        = local.tags
}

# --- security groups ------------------------------------------------------------

resource "aws_security_group" "lb" {
  name_prefix = "${var.name}-lb-"
  description = "spotrelay load balancer ${var.name}: clients in, routers out"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-lb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "lb_clients" {
  for_each = toset(var.load_balancer.allowed_cidrs)

  security_group_id = aws_security_group.lb.id
  description       = "OpenAI-compatible API from client network ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = local.lb_port
  to_port           = local.lb_port
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "lb_redirect" {
  for_each = local.https ? toset(var.load_balancer.allowed_cidrs) : toset([])

  security_group_id = aws_security_group.lb.id
  description       = "HTTP from ${each.value}, redirected to HTTPS"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "lb_to_routers" {
  security_group_id            = aws_security_group.lb.id
  description                  = "Forward to the routers"
  referenced_security_group_id = aws_security_group.router.id
  ip_protocol                  = "tcp"
  from_port                    = var.port
  to_port                      = var.port
  tags                         = local.tags
}

resource "aws_security_group" "router" {
  name_prefix = "${var.name}-router-"
  description = "spotrelay routers ${var.name}: from the load balancer and the agents"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-router" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "router_from_lb" {
  security_group_id            = aws_security_group.router.id
  description                  = "Client traffic from the load balancer"
  referenced_security_group_id = aws_security_group.lb.id
  ip_protocol                  = "tcp"
  from_port                    = var.port
  to_port                      = var.port
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "router_all" {
  #checkov:skip=CKV_AWS_382:Routers reach vLLM on every GPU node, PyPI for the install and the SSM/EC2 APIs; restrict with a proxy or VPC endpoints if your network requires it.
  security_group_id = aws_security_group.router.id
  description       = "GPU nodes, package install and AWS APIs"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
  tags              = local.tags
}

# --- fixed addresses, one per router slot -------------------------------------------

resource "aws_network_interface" "router" {
  count = var.router_count

  subnet_id       = var.subnet_ids[count.index % length(var.subnet_ids)]
  security_groups = [aws_security_group.router.id]
  description     = "spotrelay router ${var.name} slot ${count.index}: the address agents heartbeat"
  tags            = merge(local.tags, { Name = "${var.name}-router-${count.index}" })
}

# --- identity -------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    sid     = "EC2AssumeRole"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "router" {
  statement {
    sid       = "ReadNodeToken"
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.node_token.arn]
  }

  statement {
    sid     = "AttachOwnSlotInterface"
    actions = ["ec2:AttachNetworkInterface"]
    resources = concat(
      aws_network_interface.router[*].arn,
      ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"],
    )
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/spotrelay:router"
      values   = [var.name]
    }
  }

  statement {
    #checkov:skip=CKV_AWS_356:ec2:DescribeNetworkInterfaces does not support resource-level permissions.
    sid       = "SeeSlotInterface"
    actions   = ["ec2:DescribeNetworkInterfaces"]
    resources = ["*"]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptNodeTokenThroughSSM"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "router" {
  name_prefix        = "${substr(var.name, 0, 30)}-router-"
  description        = "spotrelay routers ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "router" {
  name_prefix = "spotrelay-router-"
  role        = aws_iam_role.router.id
  policy      = data.aws_iam_policy_document.router.json
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  count      = var.enable_ssm_session_manager ? 1 : 0
  role       = aws_iam_role.router.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "router" {
  name_prefix = "${substr(var.name, 0, 30)}-router-"
  role        = aws_iam_role.router.name
  tags        = local.tags
}

# --- instances: one launch template and one-instance group per slot --------------

resource "aws_launch_template" "router" {
  count = var.router_count

  name_prefix            = "${var.name}-router-${count.index}-"
  description            = "spotrelay router ${var.name} slot ${count.index}"
  image_id               = local.image_id
  instance_type          = var.instance_type
  user_data              = module.config.user_data_base64[count.index]
  ebs_optimized          = true
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.router.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = [aws_security_group.router.id]
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size_gib
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  dynamic "tag_specifications" {
    for_each = ["instance", "volume", "network-interface"]
    content {
      resource_type = tag_specifications.value
      tags          = merge(local.tags, { Name = "${var.name}-router-${count.index}" })
    }
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_autoscaling_group" "router" {
  count = var.router_count

  name                      = module.config.slots[count.index].name
  vpc_zone_identifier       = [aws_network_interface.router[count.index].subnet_id]
  min_size                  = 1
  max_size                  = 1
  desired_capacity          = 1
  health_check_type         = "ELB"
  health_check_grace_period = 600
  target_group_arns         = [aws_lb_target_group.router.arn]

  launch_template {
    id      = aws_launch_template.router[count.index].id
    version = aws_launch_template.router[count.index].latest_version
  }

  # One instance per slot: the replacement needs the slot's interface, which
  # the old instance holds until it terminates.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 0
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = module.config.slots[count.index].name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  depends_on = [aws_iam_role_policy.router]
}

# --- load balancer ---------------------------------------------------------------

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_28:A WAF in front of an inference API is a deployment choice; attach one with aws_wafv2_web_acl_association using the lb_arn output.
  #checkov:skip=CKV_AWS_150:deletion_protection is a variable (load_balancer.deletion_protection); off by default so `spotrelay down` can remove a deployment.
  #checkov:skip=CKV2_AWS_20:HTTP is redirected to HTTPS when load_balancer.certificate_arn is set; without a certificate there is no HTTPS to redirect to.
  #checkov:skip=CKV_AWS_91:Access logs are enabled when load_balancer.access_logs_bucket is set; the bucket and its policy belong to the account, not this module.
  name                       = substr("${var.name}-router", 0, 32)
  load_balancer_type         = "application"
  internal                   = var.load_balancer.internal
  subnets                    = var.load_balancer.subnet_ids
  security_groups            = [aws_security_group.lb.id]
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

resource "aws_lb_target_group" "router" {
  #checkov:skip=CKV_AWS_378:TLS terminates at the load balancer; the hop to the routers stays inside the VPC.
  name_prefix          = "spr-"
  port                 = var.port
  protocol             = "HTTP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = var.target_deregistration_delay
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

resource "aws_lb_listener" "https" {
  #checkov:skip=CKV_AWS_103:ssl_policy comes from load_balancer.ssl_policy, validated to be a TLS 1.2+ policy (default ELBSecurityPolicy-TLS13-1-2-2021-06).
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.load_balancer.ssl_policy
  certificate_arn   = var.load_balancer.certificate_arn
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.router.arn
  }
}

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

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Plain HTTP is used only when no certificate_arn is given (internal or test deployments); with one, clients get HTTPS and port 80 redirects.
  #checkov:skip=CKV_AWS_103:Same listener: TLS settings apply to the HTTPS listener created when certificate_arn is set.
  count = local.https ? 0 : 1

  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.router.arn
  }
}
