# The launch readiness gate and self-healing (docs/deploy.md, "Readiness
# gate"): an autoscaling:EC2_INSTANCE_LAUNCHING hook that the agent completes
# with CONTINUE only once the node serves the model on the routers, and the
# agent's self-heal window. Kept apart from main.tf so the pure logic of each
# feature stays in one place.

variable "launch_hook" {
  description = "Launch lifecycle hook (readiness gate): name (default <name>-launch); heartbeat_timeout covers boot and install until the agent's first heartbeat (a cold start); default_result ABANDON replaces a node whose agent never reports; agent_timeout_s is how long the agent waits for the model to serve before it ABANDONs itself."
  type = object({
    name              = optional(string)
    heartbeat_timeout = optional(number, 1200)
    default_result    = optional(string, "ABANDON")
    agent_timeout_s   = optional(number, 2400)
  })
  default = {}

  validation {
    condition     = var.launch_hook.heartbeat_timeout >= 60 && var.launch_hook.heartbeat_timeout <= 7200
    error_message = "launch_hook.heartbeat_timeout must be between 60 and 7200 seconds (the agent heartbeats every 30 s; AWS allows at most 7200)."
  }

  validation {
    condition     = contains(["CONTINUE", "ABANDON"], var.launch_hook.default_result)
    error_message = "launch_hook.default_result must be CONTINUE or ABANDON."
  }

  validation {
    condition     = var.launch_hook.agent_timeout_s >= 60 && var.launch_hook.agent_timeout_s <= min(172800, 100 * var.launch_hook.heartbeat_timeout)
    error_message = "launch_hook.agent_timeout_s must be at least 60 s and within the hook's global timeout (48 hours or 100 x heartbeat_timeout, whichever is smaller)."
  }
}

variable "engine_unhealthy_after_s" {
  description = "Self-healing: after the launch phase, an engine that fails its health checks this long is drained and its instance marked Unhealthy, so the ASG replaces it. 0 disables."
  type        = number
  default     = 300

  validation {
    condition     = var.engine_unhealthy_after_s == 0 || (var.engine_unhealthy_after_s >= 30 && var.engine_unhealthy_after_s <= 86400)
    error_message = "engine_unhealthy_after_s must be 0 (off) or between 30 and 86400 seconds."
  }
}

locals {
  launch_hook_name = coalesce(var.launch_hook.name, "${var.name}-launch")
}

output "launch_hook" {
  description = "The launch lifecycle hook (name, heartbeat timeout, default result, transition) the agent completes once the node serves."
  value = {
    name              = local.launch_hook_name
    heartbeat_timeout = var.launch_hook.heartbeat_timeout
    default_result    = var.launch_hook.default_result
    transition        = "autoscaling:EC2_INSTANCE_LAUNCHING"
  }

  precondition {
    condition     = local.launch_hook_name != local.hook_name
    error_message = "launch_hook.name must differ from lifecycle_hook.name."
  }
}
