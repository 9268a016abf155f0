# Capacity: scaling on load, on-demand fallback and the interruption queue.
# All off by default; validated in ./modules/capacity. See docs/deploy.md "Capacity".

variable "scale_on_load" {
  description = "Target tracking on the agents' load metric: enabled, metric (queue | kv_cache), target_per_node, scale_out_warmup_s, scale_in_cooldown_s, scale_in_below_ratio, scale_in_after_minutes, publish_interval_s, namespace. The pool scales between scaling.min_size and scaling.max_size."
  type = object({
    enabled                = optional(bool, false)
    metric                 = optional(string, "queue")
    target_per_node        = optional(number, 8)
    scale_out_warmup_s     = optional(number, 900)
    scale_in_cooldown_s    = optional(number, 1800)
    scale_in_below_ratio   = optional(number, 0.5)
    scale_in_after_minutes = optional(number, 15)
    publish_interval_s     = optional(number, 60)
    namespace              = optional(string, "spotrelay")
  })
  default = {}
}

variable "on_demand_fallback" {
  description = "While spot cannot launch, the controller moves every node spot does not serve to on-demand in one run, and back to spot one probe at a time when spot returns: enabled, schedule, fallback_after_s (spot failing this long: fall back), recover_after_s, step_interval_s (between two steps back), min_ready, max_on_demand (null: the group's desired capacity), recover_backoff_max_s (cap of the doubled wait between failed recovery probes)."
  type = object({
    enabled          = optional(bool, false)
    schedule         = optional(string, "rate(1 minute)")
    fallback_after_s = optional(number, 0)
    recover_after_s  = optional(number, 1800)
    step_interval_s  = optional(number, 600)
    min_ready        = optional(number, 0)
    max_on_demand    = optional(number) # null: the group's desired capacity
    # Each probe that finds spot still short doubles the quiet time before the
    # next one (recover_after_s, 2x, 4x, ...), up to this.
    recover_backoff_max_s = optional(number, 14400)
  })
  default = {}
}

variable "interruption_queue" {
  description = "EventBridge rules → encrypted SQS queue (with a DLQ) → controller, which drains the node by instance id even if its agent is dead and completes a silent agent's terminate lifecycle action: enabled, kms_key_arn (null = SSE-SQS), drain_on_rebalance, max_receive_count, message_retention_s, lifecycle_check_every_s, lifecycle_deadline_s, agent_silent_after_s."
  type = object({
    enabled                 = optional(bool, false)
    kms_key_arn             = optional(string)
    drain_on_rebalance      = optional(bool, false)
    max_receive_count       = optional(number, 5)
    message_retention_s     = optional(number, 3600)
    lifecycle_check_every_s = optional(number, 10)
    lifecycle_deadline_s    = optional(number, 300)
    agent_silent_after_s    = optional(number, 10)
  })
  default = {}
}

variable "controller" {
  description = "The controller Lambda (created when on_demand_fallback or interruption_queue is enabled): memory_mb, timeout_s, log_retention_days, kms_key_arn (logs and environment), tracing, reserved_concurrency (null = none reserved, the default; else >= 3) and package_path (the deployment zip; default: the one committed in package/)."
  type = object({
    memory_mb            = optional(number, 256)
    timeout_s            = optional(number, 60)
    log_retention_days   = optional(number, 365)
    kms_key_arn          = optional(string)
    tracing              = optional(bool, true)
    reserved_concurrency = optional(number)
    package_path         = optional(string)
  })
  default = {}

  validation {
    condition     = var.controller.reserved_concurrency == null || try(var.controller.reserved_concurrency >= 3 && floor(var.controller.reserved_concurrency) == var.controller.reserved_concurrency, false)
    error_message = "controller.reserved_concurrency must be null (none reserved) or a whole number >= 3 (2 queue pollers + the schedule)."
  }
}
