variable "name_prefix" {
  description = "Name prefix of the role and of its instance profile (IAM appends a unique suffix)."
  type        = string
}

variable "description" {
  description = "Description of the role."
  type        = string
}

variable "policy_name_prefix" {
  description = "Name prefix of the role's inline policy."
  type        = string
}

variable "statements" {
  description = "The caller's own Allow statements (sid, actions, resources), first in the inline policy."
  type = list(object({
    sid       = string
    actions   = list(string)
    resources = list(string)
  }))
}

variable "package_s3_object" {
  description = "bucket/key of the spotrelay wheel in S3 (s3:GetObject on that object only, statement ReadSpotrelayWheel); null when the package does not come from S3."
  type        = string
  default     = null
}

variable "secrets_kms_key_arn" {
  description = "Customer managed KMS key of the instance's SSM secrets: kms:Decrypt on it, through SSM only; null with the AWS managed key."
  type        = string
  default     = null
}

variable "secrets_kms_sid" {
  description = "Sid of the kms:Decrypt statement."
  type        = string
  default     = "DecryptSecretsThroughSSM"
}

variable "managed_policies" {
  description = "AWS managed policies to attach: name (after arn:<partition>:iam::aws:policy/) by a key saying what it is for."
  type        = map(string)
  default     = {}
}

variable "partition" {
  description = "AWS partition (aws, aws-cn, aws-us-gov) of the ARNs."
  type        = string
}

variable "region" {
  description = "Region of the SSM endpoint the kms:Decrypt condition names."
  type        = string
}

variable "tags" {
  description = "Tags of the role and the instance profile."
  type        = map(string)
  default     = {}
}
