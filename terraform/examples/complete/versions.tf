terraform {
  # 1.11: write-only arguments (secrets stay out of state and plan); the
  # module tests use mock providers (1.7).
  required_version = ">= 1.11"

  # State in S3 with S3-native locking (use_lockfile, Terraform >= 1.10): no
  # DynamoDB table. Partial configuration: pass bucket, key and region at
  # init, e.g. terraform init -backend-config=backend.hcl (docs/deploy.md).
  backend "s3" {
    use_lockfile = true
    encrypt      = true
  }

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.62, < 7.0"
    }
  }
}
