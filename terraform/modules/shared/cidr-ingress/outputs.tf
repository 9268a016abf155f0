output "rules" {
  description = "The rules by CIDR block, with every attribute, for the callers' plan-level tests."
  value       = aws_vpc_security_group_ingress_rule.this
}
