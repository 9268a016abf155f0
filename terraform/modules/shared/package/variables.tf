variable "pip_spec" {
  description = "The spotrelay package: s3://bucket/key.whl, a pip requirement (spotrelay==X), a bare version or a wheel URL. The callers validate it (their own inputs carry the validation, so a plan names the variable the operator set)."
  type        = string
}
