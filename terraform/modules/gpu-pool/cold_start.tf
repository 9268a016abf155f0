# Fast cold start (docs/deploy.md, "Cold start"): weights from the user's S3
# bucket (read-only access to that prefix), instance-store NVMe, and an AMI
# with vLLM baked in (bake/).

variable "model_s3_uri" {
  description = "Load the weights from this S3 prefix (s3://bucket/path/) instead of the Hugging Face hub; the nodes may read that prefix only. Pair it with an S3 gateway endpoint (see examples/complete)."
  type        = string
  default     = null
}

variable "model_s3_load" {
  description = "copy (parallel download to local NVMe/EBS at boot) or stream (vLLM --load-format runai_streamer)."
  type        = string
  default     = "copy"
}

variable "instance_store" {
  description = "Format and mount the instance-store NVMe (g5, g6, g6e have one) for the weights and the Hugging Face cache."
  type        = bool
  default     = true
}

locals {
  model_s3        = module.config.model_s3
  model_s3_prefix = local.model_s3 == null ? null : (local.model_s3.prefix == "" ? "" : "${local.model_s3.prefix}/")
}

data "aws_iam_policy_document" "model_s3" {
  count = local.model_s3 == null ? 0 : 1

  statement {
    sid       = "ReadModelWeights"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::${local.model_s3.bucket}/${local.model_s3_prefix}*"]
  }

  statement {
    sid       = "ListModelPrefix"
    actions   = ["s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${local.model_s3.bucket}"]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.model_s3_prefix}*"]
    }
  }
}

resource "aws_iam_role_policy" "model_s3" {
  count = local.model_s3 == null ? 0 : 1

  name_prefix = "spotrelay-model-s3-"
  role        = module.instance_role.role_id
  policy      = data.aws_iam_policy_document.model_s3[0].json
}

output "install_script" {
  description = "The node bootstrap script; `spotrelay-install --bake` of it is what bake/spotrelay-gpu.pkr.hcl runs to pre-install vLLM into an AMI."
  value       = module.config.install_script
}
