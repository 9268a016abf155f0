# The capacity controller: one Lambda function packaged from this repository's
# spotrelay.controller (and the one core module it imports), created when
# on_demand_fallback or interruption_queue is enabled.
#
# - An EventBridge schedule runs the on-demand fallback (on_demand_fallback).
# - The interruption queue's event source mapping delivers interruption events.
# It runs in the pool's subnets: it talks to the routers' internal control
# endpoint, like the agents.

locals {
  controller_on  = module.capacity.enabled.controller
  controller_src = coalesce(var.controller.source_dir, "${path.module}/../../..")
  # The package: spotrelay/controller/*.py and spotrelay/core/protocol.py (the
  # instance-id check). boto3 comes with the Lambda Python runtime.
  controller_files = merge(
    { for f in fileset("${local.controller_src}/controller", "*.py") : "spotrelay/controller/${f}" => "${local.controller_src}/controller/${f}" },
    {
      "spotrelay/core/__init__.py" = "${local.controller_src}/core/__init__.py"
      "spotrelay/core/protocol.py" = "${local.controller_src}/core/protocol.py"
    },
  )
}

data "archive_file" "controller" {
  count = local.controller_on ? 1 : 0

  type        = "zip"
  output_path = "${path.root}/.terraform/spotrelay-controller-${var.name}.zip"

  dynamic "source" {
    for_each = local.controller_files
    content {
      filename = source.key
      content  = file(source.value)
    }
  }
}

data "aws_iam_policy_document" "controller_assume" {
  statement {
    sid     = "LambdaAssumeRole"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "controller" {
  count = local.controller_on ? 1 : 0

  name_prefix        = "${substr(var.name, 0, 32)}-ctl-"
  description        = "spotrelay capacity controller of ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.controller_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "controller" {
  count = local.controller_on ? 1 : 0

  name_prefix = "spotrelay-controller-"
  role        = aws_iam_role.controller[0].id
  policy      = module.capacity.controller_policy
}

# Network interfaces in the VPC (the AWS managed policy for exactly this).
resource "aws_iam_role_policy_attachment" "controller_vpc" {
  count = local.controller_on ? 1 : 0

  role       = aws_iam_role.controller[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_cloudwatch_log_group" "controller" {
  count = local.controller_on ? 1 : 0

  name              = module.capacity.names.log_group
  retention_in_days = var.controller.log_retention_days
  kms_key_id        = var.controller.kms_key_arn
  tags              = local.tags
}

resource "aws_sqs_queue" "controller_dlq" {
  count = local.controller_on ? 1 : 0

  name                      = "${var.name}-controller-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = var.controller.kms_key_arn == null ? true : null
  kms_master_key_id         = var.controller.kms_key_arn
  tags                      = local.tags
}

resource "aws_iam_role_policy" "controller_dlq" {
  count = local.controller_on ? 1 : 0

  name_prefix = "spotrelay-controller-dlq-"
  role        = aws_iam_role.controller[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "FailedAsyncInvocations"
      Effect   = "Allow"
      Action   = ["sqs:SendMessage"]
      Resource = aws_sqs_queue.controller_dlq[0].arn
    }]
  })
}

resource "aws_lambda_function" "controller" {
  #checkov:skip=CKV_AWS_50:X-Ray tracing is controller.tracing, Active by default; the variable lets an account without X-Ray turn it off.
  #checkov:skip=CKV_AWS_272:The package is built by this module from the spotrelay source at plan time; there is no signing step to verify (add a code signing config if your organisation signs Lambda code).
  count = local.controller_on ? 1 : 0

  function_name    = module.capacity.names.function
  description      = "spotrelay ${var.name}: on-demand fallback and off-node interruption drains"
  role             = aws_iam_role.controller[0].arn
  runtime          = "python3.12"
  handler          = "spotrelay.controller.handler.handler"
  filename         = data.archive_file.controller[0].output_path
  source_code_hash = data.archive_file.controller[0].output_base64sha256
  memory_size      = var.controller.memory_mb
  timeout          = var.controller.timeout_s
  # At most 2 for the queue (maximum_concurrency below) + 1 for the schedule, so
  # neither throttles the other; overlapping fallback runs are safe anyway
  # (their writes are conditional on the base they observed).
  reserved_concurrent_executions = 3
  kms_key_arn                    = var.controller.kms_key_arn

  environment {
    variables = module.capacity.lambda_environment
  }

  # The controller reaches what the agents reach, so it runs with their
  # security group: the routers' internal control endpoint (the router
  # module admits this group) and the AWS APIs over HTTPS (egress_rules).
  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.node.id]
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.controller_dlq[0].arn
  }

  tracing_config {
    mode = var.controller.tracing ? "Active" : "PassThrough"
  }

  tags = local.tags

  depends_on = [
    aws_iam_role_policy.controller,
    aws_iam_role_policy.controller_dlq,
    aws_iam_role_policy_attachment.controller_vpc,
    aws_cloudwatch_log_group.controller,
  ]
}

# --- triggers -------------------------------------------------------------------

resource "aws_cloudwatch_event_rule" "fallback_schedule" {
  count = module.capacity.enabled.fallback ? 1 : 0

  name                = "${var.name}-fallback"
  description         = "spotrelay ${var.name}: on-demand fallback decision"
  schedule_expression = var.on_demand_fallback.schedule
  tags                = local.tags
}

resource "aws_cloudwatch_event_target" "fallback_schedule" {
  count = module.capacity.enabled.fallback ? 1 : 0

  rule      = aws_cloudwatch_event_rule.fallback_schedule[0].name
  target_id = "controller"
  arn       = aws_lambda_function.controller[0].arn
}

resource "aws_lambda_permission" "fallback_schedule" {
  count = module.capacity.enabled.fallback ? 1 : 0

  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.controller[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.fallback_schedule[0].arn
}

resource "aws_lambda_event_source_mapping" "interruptions" {
  count = module.capacity.enabled.queue ? 1 : 0

  event_source_arn        = aws_sqs_queue.interruptions[0].arn
  function_name           = aws_lambda_function.controller[0].arn
  batch_size              = 10
  function_response_types = ["ReportBatchItemFailures"]
  scaling_config {
    maximum_concurrency = 2
  }
}
