# CloudWatch alarms and a dashboard for the routers (alarms_enabled). What
# exists and on which thresholds is decided in ./modules/alarms (tested
# offline); docs/runbook.md has an entry per alarm.

module "alarms" {
  source = "./modules/alarms"

  name    = var.name
  enabled = var.alarms_enabled
  load_balancers = {
    public_lb           = aws_lb.this.arn_suffix
    public_target_group = aws_lb_target_group.routers["public"].arn_suffix
    heartbeat_lb        = aws_lb.heartbeat.arn_suffix
    heartbeat_group     = aws_lb_target_group.routers["heartbeat"].arn_suffix
  }
}

module "cloudwatch" {
  source = "../shared/cloudwatch-alarms"

  name              = var.name
  alarms            = module.alarms.alarms
  sns_topic_arn     = var.alarm_sns_topic_arn
  region            = local.region
  dashboard_enabled = var.alarms_enabled
  dashboard_name    = "${var.name}-routers"
  dashboard_widgets = module.alarms.dashboard_widgets
  tags              = local.tags
}
