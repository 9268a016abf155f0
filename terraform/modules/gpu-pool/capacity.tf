# The capacity pieces' pure logic (names, patterns, policy documents), tested
# offline in ./modules/capacity; scaling.tf, interruption_queue.tf and
# fallback.tf create the resources.

module "capacity" {
  source = "./modules/capacity"

  name                     = var.name
  partition                = local.partition
  region                   = local.region
  account_id               = local.account_id
  router_urls              = [var.router_url] # the routers' internal control endpoint
  node_token_parameter_arn = var.node_token_parameter_arn
  node_token_kms_key_arn   = var.node_token_kms_key_arn
  on_demand_base_capacity  = var.scaling.on_demand_base_capacity
  scale_on_load            = var.scale_on_load
  on_demand_fallback       = var.on_demand_fallback
  interruption_queue       = var.interruption_queue
  controller = {
    memory_mb          = var.controller.memory_mb
    timeout_s          = var.controller.timeout_s
    log_retention_days = var.controller.log_retention_days
    kms_key_arn        = var.controller.kms_key_arn
    tracing            = var.controller.tracing
  }
}
