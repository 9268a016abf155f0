variable "pip_spec" {
  description = "The spotrelay package: s3://bucket/key.whl, a pip requirement (spotrelay==X), a bare version or a wheel URL; one token, no spaces or quotes (it is written into the boot script)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.:/,=<>!~+@%\\[\\]-]+$", var.pip_spec))
    error_message = "The spotrelay pip spec must be one pip requirement or URL without spaces or quotes."
  }

  validation {
    condition     = !startswith(var.pip_spec, "s3://") || can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+\\.whl$", var.pip_spec))
    error_message = "The spotrelay pip spec as s3://bucket/key must name a .whl object."
  }
}

variable "sha256" {
  description = "sha256 of the package file, which spotrelay-fetch-package checks before pip sees the file; null only where the caller reports it missing."
  type        = string
  default     = null

  validation {
    condition     = var.sha256 == null || can(regex("^[0-9a-f]{64}$", coalesce(var.sha256, "-")))
    error_message = "The spotrelay package's sha256 must be 64 lowercase hex digits (sha256sum of the wheel)."
  }
}
