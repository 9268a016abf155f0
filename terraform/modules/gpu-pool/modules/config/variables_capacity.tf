variable "cloudwatch" {
  description = "The agent.yaml cloudwatch section: whether agents publish their engine's load for scaling on load (the gpu-pool's scale_on_load)."
  type = object({
    enabled    = bool
    namespace  = string
    pool       = string
    interval_s = number
  })
  default = {
    enabled    = false
    namespace  = "spotrelay"
    pool       = null
    interval_s = 60
  }
}
