variable "name" {
  description = "Name of the GPU pool (its Auto Scaling group); checked by the config module, which gets the same name."
  type        = string
}

variable "partition" {
  description = "AWS partition (aws, aws-cn, aws-us-gov)."
  type        = string
  default     = "aws"
}

variable "region" {
  description = "AWS region of the pool."
  type        = string
}

variable "account_id" {
  description = "AWS account id of the pool."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be 12 digits."
  }
}

variable "router_urls" {
  description = "Where the controller reads ready nodes and drains: the routers' internal control endpoint (one URL; the routers share their registry)."
  type        = list(string)
  default     = []
}

variable "node_token_parameter_arn" {
  description = "ARN of the SSM parameter with the node token (the controller authenticates to the routers with it)."
  type        = string
}

variable "node_token_kms_key_arn" {
  description = "Customer managed KMS key of the node token parameter, if any."
  type        = string
  default     = null
}

variable "on_demand_base_capacity" {
  description = "The pool's configured on-demand base: the fallback never lowers below it."
  type        = number
  default     = 0
}

variable "scale_on_load" {
  description = "Target tracking on the agents' load metric. See the gpu-pool README."
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

  validation {
    condition     = contains(["queue", "kv_cache"], var.scale_on_load.metric)
    error_message = "scale_on_load.metric must be queue (requests running + waiting per node) or kv_cache (KV-cache usage %)."
  }

  validation {
    condition     = var.scale_on_load.target_per_node > 0 && (var.scale_on_load.metric != "kv_cache" || var.scale_on_load.target_per_node <= 100)
    error_message = "scale_on_load.target_per_node must be > 0 (and at most 100 for kv_cache, a percentage)."
  }

  validation {
    condition     = var.scale_on_load.scale_out_warmup_s >= 60 && var.scale_on_load.scale_in_cooldown_s >= 300
    error_message = "scale_on_load.scale_out_warmup_s must be >= 60 and scale_in_cooldown_s >= 300: a GPU node takes minutes to serve."
  }

  validation {
    condition     = var.scale_on_load.scale_in_below_ratio > 0 && var.scale_on_load.scale_in_below_ratio < 1
    error_message = "scale_on_load.scale_in_below_ratio must be between 0 and 1 (exclusive): scale in only well below the target."
  }

  validation {
    condition     = var.scale_on_load.scale_in_after_minutes >= 5 && var.scale_on_load.scale_in_after_minutes <= 60
    error_message = "scale_on_load.scale_in_after_minutes must be between 5 and 60."
  }

  validation {
    condition     = var.scale_on_load.publish_interval_s >= 10 && var.scale_on_load.publish_interval_s <= 60
    error_message = "scale_on_load.publish_interval_s must be between 10 and 60 (one PutMetricData per interval, 1-minute alarms)."
  }
}

variable "on_demand_fallback" {
  description = "The controller's on-demand fallback. See the gpu-pool README."
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

  validation {
    condition     = can(regex("^(rate\\([0-9]+ (minute|minutes|hour|hours)\\)|cron\\(.+\\))$", var.on_demand_fallback.schedule))
    error_message = "on_demand_fallback.schedule must be an EventBridge rate(...) or cron(...) expression."
  }

  validation {
    condition = (
      var.on_demand_fallback.fallback_after_s >= 0 && var.on_demand_fallback.recover_after_s >= 0 &&
      var.on_demand_fallback.step_interval_s >= 0 && var.on_demand_fallback.min_ready >= 0
    )
    error_message = "on_demand_fallback thresholds must be >= 0."
  }

  validation {
    condition     = var.on_demand_fallback.recover_backoff_max_s >= var.on_demand_fallback.recover_after_s
    error_message = "on_demand_fallback.recover_backoff_max_s must be >= recover_after_s (equal: no backoff)."
  }

  validation {
    condition     = var.on_demand_fallback.max_on_demand == null || try(var.on_demand_fallback.max_on_demand >= 1 && floor(var.on_demand_fallback.max_on_demand) == var.on_demand_fallback.max_on_demand, false)
    error_message = "on_demand_fallback.max_on_demand must be a whole number >= 1, or null (the group's desired capacity)."
  }
}

variable "interruption_queue" {
  description = "EventBridge rules → SQS (encrypted, with a dead-letter queue) → controller."
  type = object({
    enabled             = optional(bool, false)
    kms_key_arn         = optional(string)
    drain_on_rebalance  = optional(bool, false)
    max_receive_count   = optional(number, 5)
    message_retention_s = optional(number, 3600)
    # Completing a silent agent's terminate action: checks every N seconds
    # (SQS DelaySeconds), decided by the deadline, agent silent after N seconds.
    lifecycle_check_every_s = optional(number, 10)
    lifecycle_deadline_s    = optional(number, 300)
    agent_silent_after_s    = optional(number, 10)
  })
  default = {}

  validation {
    condition     = var.interruption_queue.lifecycle_check_every_s >= 1 && var.interruption_queue.lifecycle_check_every_s <= 900 && floor(var.interruption_queue.lifecycle_check_every_s) == var.interruption_queue.lifecycle_check_every_s
    error_message = "interruption_queue.lifecycle_check_every_s must be a whole number of seconds between 1 and 900 (SQS DelaySeconds)."
  }

  validation {
    condition     = var.interruption_queue.lifecycle_deadline_s >= 1 && var.interruption_queue.agent_silent_after_s >= 1
    error_message = "interruption_queue.lifecycle_deadline_s and agent_silent_after_s must be >= 1."
  }

  validation {
    condition     = var.interruption_queue.max_receive_count >= 1 && var.interruption_queue.max_receive_count <= 1000
    error_message = "interruption_queue.max_receive_count must be between 1 and 1000."
  }

  validation {
    condition     = var.interruption_queue.message_retention_s >= 60 && var.interruption_queue.message_retention_s <= 1209600
    error_message = "interruption_queue.message_retention_s must be between 60 and 1209600 seconds."
  }
}

variable "controller" {
  description = "The controller Lambda function: memory, timeout, log retention, tracing and the KMS key for its logs and environment."
  type = object({
    memory_mb          = optional(number, 256)
    timeout_s          = optional(number, 60)
    log_retention_days = optional(number, 365)
    kms_key_arn        = optional(string)
    tracing            = optional(bool, true)
  })
  default = {}

  validation {
    condition     = var.controller.timeout_s >= 10 && var.controller.timeout_s <= 900
    error_message = "controller.timeout_s must be between 10 and 900."
  }

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.controller.log_retention_days)
    error_message = "controller.log_retention_days must be a CloudWatch Logs retention (1, 3, 5, 7, 14, 30, 60, 90, ..., 365, ... 3653; 0 = never expire)."
  }

  validation {
    condition     = var.controller.memory_mb >= 128 && var.controller.memory_mb <= 10240
    error_message = "controller.memory_mb must be between 128 and 10240."
  }
}
