# Capacity inputs of the gpu-pool module, passed through. The example turns the
# on-demand fallback on (the module's default is off): a spot drought then
# costs on-demand prices instead of missing nodes. With `spotrelay up`, change
# them under `variables:` in deploy.yaml, e.g.
#   variables:
#     on_demand_fallback: {enabled: true, max_on_demand: 2}
# See docs/deploy.md, "Capacity".

variable "scale_on_load" {
  description = "The gpu-pool's scale_on_load: target tracking on the agents' load metric."
  type        = any
  default     = {}
}

variable "on_demand_fallback" {
  description = "The gpu-pool's on_demand_fallback: while spot cannot launch, every node spot does not serve runs on-demand (on here by default; {enabled = false} turns it off)."
  type        = any
  default     = { enabled = true }
}

variable "interruption_queue" {
  description = "The gpu-pool's interruption_queue: EventBridge → SQS → controller drains nodes by instance id."
  type        = any
  default     = {}
}
