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
