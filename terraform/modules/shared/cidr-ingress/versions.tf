terraform {
  # Terraform itself is pinned by the callers (gpu-pool, router): this module
  # is only ever part of their configuration.
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.62"
    }
  }
}
