# Readiness gate and self-healing (docs/deploy.md, "Readiness gate").
#
# Both lifecycle hooks are their own resources, so edits to them (timeouts,
# default results) apply to an existing group; initial_lifecycle_hook is only
# read when the group is created. The catch, documented in docs/deploy.md:
# the nodes the group launches in the seconds before the launch hook exists
# go InService without the gate (`spotrelay up` still waits for them to be
# ready); every later launch — scale-out, spot replacement, capacity
# rebalance, instance refresh — waits for the agent's CONTINUE.

variable "launch_hook" {
  description = "Launch lifecycle hook: name (default <name>-launch), heartbeat_timeout (60-7200 s, sized for a cold start: boot and install until the agent's first heartbeat), default_result (ABANDON), agent_timeout_s (how long the agent waits for the model to serve before it ABANDONs)."
  type = object({
    name              = optional(string)
    heartbeat_timeout = optional(number, 1200)
    default_result    = optional(string, "ABANDON")
    agent_timeout_s   = optional(number, 2400)
  })
  default = {}
}

variable "engine_unhealthy_after_s" {
  description = "Self-healing: an engine failing its health checks this long after the launch phase is drained and its instance set Unhealthy (the ASG replaces it). 0 disables."
  type        = number
  default     = 300
}

variable "instance_refresh_warmup_s" {
  description = "Instance refresh warmup after a replacement is InService (the launch hook already waited for the model, so this can be short)."
  type        = number
  default     = 60
}

# The launch hook (readiness gate) and the termination hook (drain).
resource "aws_autoscaling_lifecycle_hook" "node" {
  for_each = {
    launch    = module.config.launch_hook
    terminate = module.config.lifecycle_hook
  }

  name                   = each.value.name
  autoscaling_group_name = aws_autoscaling_group.node.name
  lifecycle_transition   = each.value.transition
  heartbeat_timeout      = each.value.heartbeat_timeout
  default_result         = each.value.default_result
}

output "launch_hook_name" {
  description = "Name of the launch lifecycle hook the agent completes (CONTINUE) once the node serves the model on the routers."
  value       = aws_autoscaling_lifecycle_hook.node["launch"].name
}

output "launch_hook_timeout_s" {
  description = "Heartbeat timeout of the launch hook: `spotrelay status` calls instances older than this that never registered \"never registered\"."
  value       = module.config.launch_hook.heartbeat_timeout
}
