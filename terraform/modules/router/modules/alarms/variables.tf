variable "name" {
  description = "Name of the router deployment."
  type        = string
}

variable "enabled" {
  description = "Create the alarms and the dashboard."
  type        = bool
  default     = false
}

variable "load_balancers" {
  description = "ARN suffixes (the CloudWatch dimension values) of the public load balancer and its target group, and of the agents' heartbeat load balancer and its target group."
  type = object({
    public_lb           = string
    public_target_group = string
    heartbeat_lb        = string
    heartbeat_group     = string
  })
}

variable "errors_per_minute" {
  description = "5xx answers per minute, sustained for 5 minutes, that fire the 5xx alarms."
  type        = number
  default     = 10

  validation {
    condition     = var.errors_per_minute >= 1
    error_message = "errors_per_minute must be at least 1."
  }
}
