# A security group of the deployment and its egress allow-list. Rules are
# separate resources (never inline), so rules the other modules add to the
# group (the router's links, the GPU nodes' engine port) live alongside. The
# group is replaced before it is destroyed: a changed description or VPC
# does not leave its instances without a group.

resource "aws_security_group" "this" {
  #checkov:skip=CKV2_AWS_5:Every caller attaches the group through the id output (launch template, load balancer, cache, Lambda function); checkov does not follow an attachment across the module boundary.
  name_prefix = coalesce(var.name_prefix, "${var.name}-")
  description = var.description
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "allowed" {
  for_each = var.egress_rules

  security_group_id = aws_security_group.this.id
  description       = each.value.description
  ip_protocol       = each.value.ip_protocol
  from_port         = each.value.from_port
  to_port           = each.value.to_port
  cidr_ipv4         = each.value.cidr_ipv4
  prefix_list_id    = each.value.prefix_list_id
  tags              = var.tags
}
