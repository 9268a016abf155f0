# Where resources stood before the shared modules (../shared) took them over:
# an existing deployment's plan moves them, it does not replace them.

moved {
  from = aws_security_group.lb
  to   = module.security_group["lb"].aws_security_group.this
}

moved {
  from = aws_security_group.heartbeat
  to   = module.security_group["heartbeat"].aws_security_group.this
}

moved {
  from = aws_security_group.router
  to   = module.security_group["router"].aws_security_group.this
}

moved {
  from = aws_security_group.registry
  to   = module.security_group["registry"].aws_security_group.this
}

moved {
  from = aws_vpc_security_group_egress_rule.router_allowed
  to   = module.security_group["router"].aws_vpc_security_group_egress_rule.allowed
}

moved {
  from = aws_vpc_security_group_ingress_rule.lb_clients
  to   = module.cidr_ingress["lb_clients"].aws_vpc_security_group_ingress_rule.this
}

moved {
  from = aws_vpc_security_group_ingress_rule.lb_redirect
  to   = module.cidr_ingress["lb_redirect"].aws_vpc_security_group_ingress_rule.this
}

moved {
  from = aws_vpc_security_group_ingress_rule.heartbeat_from_operators
  to   = module.cidr_ingress["heartbeat_from_operators"].aws_vpc_security_group_ingress_rule.this
}

moved {
  from = aws_vpc_security_group_ingress_rule.router_metrics
  to   = module.cidr_ingress["router_metrics"].aws_vpc_security_group_ingress_rule.this
}

moved {
  from = aws_iam_role.router
  to   = module.instance_role.aws_iam_role.this
}

moved {
  from = aws_iam_role_policy.router
  to   = module.instance_role.aws_iam_role_policy.this
}

moved {
  from = aws_iam_role_policy_attachment.ssm_core[0]
  to   = module.instance_role.aws_iam_role_policy_attachment.managed["ssm_core"]
}

moved {
  from = aws_iam_instance_profile.router
  to   = module.instance_role.aws_iam_instance_profile.this
}

moved {
  from = aws_launch_template.router
  to   = module.launch_template.aws_launch_template.this
}

moved {
  from = aws_cloudwatch_metric_alarm.router
  to   = module.cloudwatch.aws_cloudwatch_metric_alarm.this
}

moved {
  from = aws_cloudwatch_dashboard.router
  to   = module.cloudwatch.aws_cloudwatch_dashboard.this
}

moved {
  from = aws_lb_target_group.router
  to   = aws_lb_target_group.routers["public"]
}

moved {
  from = aws_lb_target_group.heartbeat
  to   = aws_lb_target_group.routers["heartbeat"]
}

moved {
  from = aws_lb_listener.https[0]
  to   = aws_lb_listener.not_found["https"]
}

moved {
  from = aws_lb_listener.http[0]
  to   = aws_lb_listener.not_found["http"]
}

moved {
  from = aws_lb_listener.heartbeat
  to   = aws_lb_listener.not_found["heartbeat"]
}

# The public rules were one resource, then one per five paths (api[i]).
moved {
  from = aws_lb_listener_rule.api
  to   = aws_lb_listener_rule.api[0]
}

moved {
  from = aws_lb_listener_rule.api[0]
  to   = aws_lb_listener_rule.forward["api0"]
}

moved {
  from = aws_lb_listener_rule.api[1]
  to   = aws_lb_listener_rule.forward["api1"]
}

moved {
  from = aws_lb_listener_rule.api[2]
  to   = aws_lb_listener_rule.forward["api2"]
}

moved {
  from = aws_lb_listener_rule.control
  to   = aws_lb_listener_rule.forward["control"]
}
