# Where resources stood before the shared modules (../shared) took them over:
# an existing pool's plan moves them, it does not replace them.

moved {
  from = aws_security_group.node
  to   = module.node_security_group.aws_security_group.this
}

moved {
  from = aws_vpc_security_group_egress_rule.allowed
  to   = module.node_security_group.aws_vpc_security_group_egress_rule.allowed
}

moved {
  from = aws_security_group.controller[0]
  to   = module.controller_security_group[0].aws_security_group.this
}

moved {
  from = aws_vpc_security_group_egress_rule.controller
  to   = module.controller_security_group[0].aws_vpc_security_group_egress_rule.allowed
}

moved {
  from = aws_iam_role.node
  to   = module.instance_role.aws_iam_role.this
}

moved {
  from = aws_iam_role_policy.node
  to   = module.instance_role.aws_iam_role_policy.this
}

moved {
  from = aws_iam_role_policy_attachment.ssm_core[0]
  to   = module.instance_role.aws_iam_role_policy_attachment.managed["ssm_core"]
}

moved {
  from = aws_iam_role_policy_attachment.cloudwatch_agent[0]
  to   = module.instance_role.aws_iam_role_policy_attachment.managed["cloudwatch_agent"]
}

moved {
  from = aws_iam_instance_profile.node
  to   = module.instance_role.aws_iam_instance_profile.this
}

moved {
  from = aws_launch_template.node
  to   = module.launch_template.aws_launch_template.this
}

moved {
  from = aws_autoscaling_lifecycle_hook.launch
  to   = aws_autoscaling_lifecycle_hook.node["launch"]
}

moved {
  from = aws_autoscaling_lifecycle_hook.terminate
  to   = aws_autoscaling_lifecycle_hook.node["terminate"]
}

moved {
  from = aws_cloudwatch_metric_alarm.pool
  to   = module.cloudwatch.aws_cloudwatch_metric_alarm.this
}

moved {
  from = aws_cloudwatch_dashboard.pool
  to   = module.cloudwatch.aws_cloudwatch_dashboard.this
}
