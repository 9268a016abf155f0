output "id" {
  description = "Id of the security group."
  value       = aws_security_group.this.id
}

output "egress_rules" {
  description = "The egress rules by key, with every attribute, for the callers' plan-level tests."
  value       = aws_vpc_security_group_egress_rule.allowed
}
