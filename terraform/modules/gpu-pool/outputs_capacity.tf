output "controller_function_name" {
  description = "Name of the capacity controller Lambda function (null when neither fallback nor queue is enabled)."
  value       = one(aws_lambda_function.controller[*].function_name)
}

output "interruption_queue_url" {
  description = "URL of the interruption queue (null when disabled)."
  value       = one(aws_sqs_queue.interruptions[*].url)
}

output "interruption_dlq_url" {
  description = "URL of the interruption queue's dead-letter queue (null when disabled)."
  value       = one(aws_sqs_queue.interruptions_dlq[*].url)
}

output "controller_security_group_ids" {
  description = "The capacity controller's security group, as a list (empty without the controller): pass it to the router module's control_client_security_group_ids so the controller reaches the routers' internal control endpoint."
  value       = module.controller_security_group[*].id
}
