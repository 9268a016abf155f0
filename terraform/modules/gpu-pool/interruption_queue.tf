# Hearing interruptions without the agent (interruption_queue.enabled), as
# aws-node-termination-handler's queue mode does: EventBridge rules for the spot
# interruption warning, the rebalance recommendation, this group's terminate
# lifecycle action and instance state changes to stopping/shutting-down/
# terminated send the events to an encrypted SQS queue with a dead-letter queue.
# The controller Lambda (fallback.tf) consumes it and drains the node by instance
# id through the routers, so a hung or crashed agent still gets its node drained.

locals {
  queue          = module.capacity.queue_settings
  queue_sse_sqs  = local.queue.kms_key_arn == null
  queue_kms_key  = local.queue.kms_key_arn
  queue_rule_set = module.capacity.enabled.queue ? module.capacity.names.rules : {}
}

resource "aws_sqs_queue" "interruptions_dlq" {
  count = module.capacity.enabled.queue ? 1 : 0

  name                      = module.capacity.names.dlq
  message_retention_seconds = 1209600 # 14 days to look at what could not be handled
  sqs_managed_sse_enabled   = local.queue_sse_sqs ? true : null
  kms_master_key_id         = local.queue_kms_key
  tags                      = local.tags
}

resource "aws_sqs_queue" "interruptions" {
  count = module.capacity.enabled.queue ? 1 : 0

  name                       = module.capacity.names.queue
  message_retention_seconds  = local.queue.message_retention_s
  visibility_timeout_seconds = local.queue.visibility_timeout_s
  sqs_managed_sse_enabled    = local.queue_sse_sqs ? true : null
  kms_master_key_id          = local.queue_kms_key
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.interruptions_dlq[0].arn
    maxReceiveCount     = local.queue.max_receive_count
  })
  tags = local.tags
}

resource "aws_sqs_queue_policy" "interruptions" {
  count = module.capacity.enabled.queue ? 1 : 0

  queue_url = aws_sqs_queue.interruptions[0].id
  policy    = module.capacity.queue_policy
}

resource "aws_cloudwatch_event_rule" "interruption" {
  for_each = local.queue_rule_set

  name          = each.value
  description   = "spotrelay ${var.name}: ${each.key} events to the interruption queue"
  event_pattern = module.capacity.event_patterns[each.key]
  tags          = local.tags
}

resource "aws_cloudwatch_event_target" "interruption" {
  for_each = local.queue_rule_set

  rule      = aws_cloudwatch_event_rule.interruption[each.key].name
  target_id = "interruption-queue"
  arn       = aws_sqs_queue.interruptions[0].arn
}
