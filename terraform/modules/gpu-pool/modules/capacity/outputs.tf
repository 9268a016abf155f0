output "enabled" {
  description = "Which pieces are on: scaling, fallback, queue, controller (the Lambda serves fallback and queue)."
  value = {
    scaling    = local.scaling_on
    fallback   = local.fallback_on
    queue      = local.queue_on
    controller = local.controller_on
  }

  precondition {
    condition     = !local.fallback_on || coalesce(var.on_demand_fallback.max_on_demand, var.on_demand_base_capacity) >= var.on_demand_base_capacity
    error_message = "on_demand_fallback.max_on_demand cannot be below scaling.on_demand_base_capacity."
  }

  precondition {
    condition     = !local.controller_on || length(var.router_urls) > 0
    error_message = "The controller needs router_urls: it reads ready nodes and drains through the routers."
  }
}

output "names" {
  description = "Names of the capacity resources."
  value = {
    function   = local.function_name
    log_group  = local.log_group_name
    queue      = local.queue_name
    dlq        = local.dlq_name
    rules      = local.rule_names
    queue_arn  = local.queue_arn
    asg_arn    = local.asg_arn
    rules_arns = local.rule_arns
  }
}

output "event_patterns" {
  description = "EventBridge event patterns (JSON) by rule key."
  value       = { for k, p in local.event_patterns : k => jsonencode(p) }
}

output "controller_policy" {
  description = "The controller's IAM policy document (JSON)."
  value       = local.controller_policy
}

output "queue_policy" {
  description = "The interruption queue's resource policy (JSON)."
  value       = local.queue_policy
}

output "node_metrics_policy" {
  description = "The nodes' extra IAM policy when they publish their load (JSON)."
  value       = local.node_metrics_policy
}

output "lambda_environment" {
  description = "The controller's environment variables."
  value       = local.lambda_environment
}

output "queue_settings" {
  description = "Visibility timeout (6x the function timeout, as AWS recommends for Lambda consumers), retention and redrive."
  value = {
    visibility_timeout_s = 6 * var.controller.timeout_s
    message_retention_s  = var.interruption_queue.message_retention_s
    max_receive_count    = var.interruption_queue.max_receive_count
    kms_key_arn          = var.interruption_queue.kms_key_arn
  }
}

output "scaling" {
  description = "Scaling settings with the metric name and scale-in threshold resolved."
  value       = local.scaling
}

output "agent_cloudwatch" {
  description = "The agent.yaml cloudwatch section."
  value       = local.agent_cloudwatch
}
