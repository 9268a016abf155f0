# Fast cold start (docs/deploy.md, "Cold start"): weights from the user's S3
# bucket instead of the Hugging Face hub, and the instance-store NVMe of g5,
# g6 and g6e for the weights and the Hugging Face cache.

variable "model_s3_uri" {
  description = "Load the weights from this S3 prefix (s3://bucket/path/) instead of the Hugging Face hub. The nodes get read access to it only."
  type        = string
  default     = null

  validation {
    condition     = var.model_s3_uri == null || can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_.=+@-][A-Za-z0-9_.=+@/-]*)?/?$", coalesce(var.model_s3_uri, "s3://x")))
    error_message = "model_s3_uri must look like s3://bucket/prefix/ (letters, digits and _.=+@-/ only)."
  }
}

variable "model_s3_load" {
  description = "How weights from model_s3_uri reach the GPU: \"copy\" (a parallel download to local disk at boot, then vLLM loads the local copy) or \"stream\" (vLLM --load-format runai_streamer reads S3 directly; installs vllm[runai])."
  type        = string
  default     = "copy"

  validation {
    condition     = contains(["copy", "stream"], var.model_s3_load)
    error_message = "model_s3_load must be copy or stream."
  }
}

variable "instance_store" {
  description = "Format and mount the instance-store NVMe (when the type has one) at volumes.model_mount for the weights and the Hugging Face cache."
  type        = bool
  default     = true
}

locals {
  s3_parts   = var.model_s3_uri == null ? null : regex("^s3://([^/]+)/?(.*)$", var.model_s3_uri)
  s3_bucket  = local.s3_parts == null ? null : local.s3_parts[0]
  s3_prefix  = local.s3_parts == null ? null : trimsuffix(local.s3_parts[1], "/")
  s3_copy    = var.model_s3_uri != null && var.model_s3_load == "copy"
  s3_stream  = var.model_s3_uri != null && var.model_s3_load == "stream"
  weights_at = "${var.volumes.model_mount}/weights"

  # What `vllm serve` loads: the local copy, the S3 prefix, or the hub id.
  vllm_model     = local.s3_copy ? local.weights_at : (local.s3_stream ? var.model_s3_uri : var.model.name)
  vllm_load_args = local.s3_stream ? ["--load-format", "runai_streamer"] : []

  nvme_script = templatefile("${path.module}/templates/nvme.sh.tftpl", {
    mount = var.volumes.model_mount
  })
}

output "model_s3" {
  description = "The S3 model source (bucket, prefix, load mode), or null: the gpu-pool module grants read access to exactly this."
  value = var.model_s3_uri == null ? null : {
    bucket = local.s3_bucket
    prefix = local.s3_prefix
    load   = var.model_s3_load
  }
}

output "nvme_script" {
  description = "The instance-store NVMe setup cloud-init runs before the install (empty when instance_store is false)."
  value       = var.instance_store ? local.nvme_script : ""
}
