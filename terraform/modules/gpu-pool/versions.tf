terraform {
  required_version = ">= 1.7" # mock_provider in the module tests

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4" # packages the capacity controller (fallback.tf)
    }
  }
}
