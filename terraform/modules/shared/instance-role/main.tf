# The IAM role an EC2 instance of the deployment runs with, and its instance
# profile: the caller's own permissions first, then the two every spotrelay
# instance needs in the same form (read the spotrelay wheel in S3, decrypt
# its SSM secrets through SSM only), then AWS managed policies. One module so
# that the GPU nodes and the routers grant those the same way.

data "aws_iam_policy_document" "assume" {
  statement {
    sid     = "EC2AssumeRole"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "this" {
  dynamic "statement" {
    for_each = var.statements
    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = statement.value.resources
    }
  }

  dynamic "statement" {
    for_each = var.package_s3_object == null ? [] : [var.package_s3_object]
    content {
      sid       = "ReadSpotrelayWheel"
      actions   = ["s3:GetObject"]
      resources = ["arn:${var.partition}:s3:::${statement.value}"]
    }
  }

  dynamic "statement" {
    for_each = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]
    content {
      sid       = var.secrets_kms_sid
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${var.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "this" {
  name_prefix        = var.name_prefix
  description        = var.description
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "this" {
  name_prefix = var.policy_name_prefix
  role        = aws_iam_role.this.id
  policy      = data.aws_iam_policy_document.this.json
}

resource "aws_iam_role_policy_attachment" "managed" {
  for_each = var.managed_policies

  role       = aws_iam_role.this.name
  policy_arn = "arn:${var.partition}:iam::aws:policy/${each.value}"
}

resource "aws_iam_instance_profile" "this" {
  name_prefix = var.name_prefix
  role        = aws_iam_role.this.name
  tags        = var.tags
}
