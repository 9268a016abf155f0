# The artifacts bucket: the spotrelay wheel `spotrelay up` builds from the
# checkout lands here, under a key named by its sha256, and every router and
# GPU node installs exactly that object after checking the hash
# (docs/deploy.md, "The package the instances install").
#
# It must exist before the wheel can be uploaded, so `spotrelay up` applies
# every resource of this file first (`terraform apply -target=<each>`; it
# reads the list from this file), uploads, then plans and applies the rest.
# With Terraform alone:
#   terraform apply -target=aws_s3_bucket.artifacts -target=aws_s3_bucket_policy.artifacts ...
#   aws s3 cp dist/spotrelay-X-py3-none-any.whl s3://<artifacts_bucket>/spotrelay/<sha256>/
#   terraform apply -var 'spotrelay_wheel={key="spotrelay/<sha256>/spotrelay-X-py3-none-any.whl",sha256="<sha256>"}'

data "aws_caller_identity" "current" {}

locals {
  # Deterministic, so the instance roles' s3:GetObject statement is known at plan;
  # at most 28 + 5 + 12 + 1 + 14 = 60 characters (S3 allows 63).
  artifacts_bucket = "${var.name}-art-${data.aws_caller_identity.current.account_id}-${var.region}"
  # What the routers and GPU nodes install: the uploaded wheel, or a pinned requirement.
  spotrelay_package = var.spotrelay_wheel != null ? {
    pip_spec = "s3://${local.artifacts_bucket}/${var.spotrelay_wheel.key}"
    sha256   = var.spotrelay_wheel.sha256
    } : {
    pip_spec = var.spotrelay_pip_spec
    sha256   = var.spotrelay_sha256
  }
}

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_144:Build artifacts are rebuilt from the checkout by spotrelay up; cross-region replication buys nothing.
  #checkov:skip=CKV_AWS_18:Reads are by the deployment's own instance roles (CloudTrail data events if needed); no access-log bucket to create.
  #checkov:skip=CKV2_AWS_62:Nothing reacts to uploads; no event notifications.
  #checkov:skip=CKV2_AWS_61:Wheels are small and content-addressed (never overwritten); old ones stay for rollbacks until `spotrelay down`.
  #checkov:skip=CKV_AWS_145:SSE-S3 (AES256): a customer managed key would add kms:Decrypt to every instance role for a public-source wheel.
  bucket        = local.artifacts_bucket
  force_destroy = true
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
    bucket_key_enabled = true
  }
}

# TLS only: every request over plain HTTP is denied, whoever makes it.
data "aws_iam_policy_document" "artifacts" {
  statement {
    sid       = "TLSOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.artifacts.arn, "${aws_s3_bucket.artifacts.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "artifacts" {
  bucket     = aws_s3_bucket.artifacts.id
  policy     = data.aws_iam_policy_document.artifacts.json
  depends_on = [aws_s3_bucket_public_access_block.artifacts]
}

output "artifacts_bucket" {
  description = "The artifacts bucket `spotrelay up` uploads the wheel to."
  value       = aws_s3_bucket.artifacts.bucket
}

output "spotrelay_package" {
  description = "What routers and GPU nodes install (pip_spec) and the sha256 they check first."
  value       = local.spotrelay_package
}
