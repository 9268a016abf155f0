# The capacity controller: one Lambda function packaged from this repository's
# spotrelay.controller (and the one core module it imports), created when
# on_demand_fallback or interruption_queue is enabled.
#
# - An EventBridge schedule runs the on-demand fallback (on_demand_fallback).
# - The interruption queue's event source mapping delivers interruption events.
# It runs in the pool's subnets: it talks to the routers' internal control
# endpoint, like the agents.

locals {
  controller_on = module.capacity.enabled.controller
  # The package is committed next to this module (built reproducibly from
  # controller/ and the core modules it imports by `make controller-zip`), not zipped at
  # plan time: a saved plan applies on any machine with the same checkout,
  # and no archive provider is needed. docs/deploy.md "The controller package".
  controller_package = coalesce(var.controller.package_path, "${path.module}/package/spotrelay-controller.zip")
  # Its egress: HTTPS to the AWS APIs (the node allow-list's rules that cover
  # 443); the router module adds the rule to its internal control endpoint.
  controller_egress = {
    for k, r in var.egress_rules : k => r
    if r.ip_protocol == "tcp" && r.from_port <= 443 && r.to_port >= 443
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
    Statement = concat(
      [{
        Sid      = "FailedAsyncInvocations"
        Effect   = "Allow"
        Action   = ["sqs:SendMessage"]
        Resource = aws_sqs_queue.controller_dlq[0].arn
      }],
      # A queue encrypted with a customer key takes a message only from a
      # sender that may make data keys with it (the key's policy must let IAM
      # policies grant that: AWS's default key policy does).
      var.controller.kms_key_arn == null ? [] : [{
        Sid       = "EncryptFailedInvocations"
        Effect    = "Allow"
        Action    = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource  = var.controller.kms_key_arn
        Condition = { StringEquals = { "kms:ViaService" = "sqs.${local.region}.amazonaws.com" } }
      }],
    )
  })
}

resource "aws_lambda_function" "controller" {
  #checkov:skip=CKV_AWS_50:X-Ray tracing is controller.tracing, Active by default; the variable lets an account without X-Ray turn it off.
  #checkov:skip=CKV_AWS_272:The package is the zip committed with this module, built reproducibly from the spotrelay source and checked against it by a test; there is no signing step to verify (add a code signing config, and controller.package_path to a signed zip, if your organisation signs Lambda code).
  count = local.controller_on ? 1 : 0

  function_name    = module.capacity.names.function
  description      = "spotrelay ${var.name}: on-demand fallback and off-node interruption drains"
  role             = aws_iam_role.controller[0].arn
  runtime          = "python3.12"
  handler          = "spotrelay.controller.handler.handler"
  filename         = local.controller_package
  source_code_hash = filebase64sha256(local.controller_package)
  memory_size      = var.controller.memory_mb
  timeout          = var.controller.timeout_s
  # Unreserved by default: a new account's concurrency quota (often 10) leaves
  # nothing to reserve, and AWS refuses a reservation that takes the
  # unreserved pool below 100. controller.reserved_concurrency (>= 3: 2 for
  # the queue's maximum_concurrency + 1 for the schedule) guarantees capacity
  # where the quota allows; overlapping fallback runs are safe anyway (their
  # writes are conditional on the base they observed).
  reserved_concurrent_executions = var.controller.reserved_concurrency
  kms_key_arn                    = var.controller.kms_key_arn

  environment {
    variables = module.capacity.lambda_environment
  }

  # Its own security group (below), not the nodes': on destroy the function's
  # network interfaces are moved to the VPC's default group first
  # (replace_security_groups_on_destroy), so deleting the groups does not wait
  # out Lambda's interface cleanup (DependencyViolation on `spotrelay down`).
  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [module.controller_security_group[0].id]
  }
  replace_security_groups_on_destroy = true

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

module "controller_security_group" {
  source = "../shared/security-group"
  count  = local.controller_on ? 1 : 0

  name         = "${var.name}-controller"
  name_prefix  = "${var.name}-ctl-"
  description  = "spotrelay capacity controller of ${var.name}: AWS APIs and the routers control endpoint"
  vpc_id       = var.vpc_id
  egress_rules = local.controller_egress
  tags         = local.tags
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
