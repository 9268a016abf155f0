# One port of a security group opened to a list of CIDR blocks: one rule per
# block, keyed by the block, so adding or removing a network touches only its
# own rule.

resource "aws_vpc_security_group_ingress_rule" "this" {
  for_each = toset(var.cidrs)

  security_group_id = var.security_group_id
  description       = format(var.description, each.value)
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.port
  to_port           = var.port
  tags              = var.tags
}
