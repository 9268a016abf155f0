# Capacity inputs of the gpu-pool module, passed through (all off by default).
# With `spotrelay up`, set them under `variables:` in deploy.yaml, e.g.
#   variables:
#     on_demand_fallback: {enabled: true, max_on_demand: 2}
# See docs/deploy.md, "Capacity".

variable "scale_on_load" {
  description = "The gpu-pool's scale_on_load: target tracking on the agents' load metric."
  type        = any
  default     = {}
}

variable "on_demand_fallback" {
  description = "The gpu-pool's on_demand_fallback: the controller raises the on-demand base while spot cannot launch."
  type        = any
  default     = {}
}

variable "interruption_queue" {
  description = "The gpu-pool's interruption_queue: EventBridge → SQS → controller drains nodes by instance id."
  type        = any
  default     = {}
}
