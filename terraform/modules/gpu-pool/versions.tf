terraform {
  required_version = ">= 1.7" # mock_provider in the module tests

  required_providers {
    aws = {
      # The floor is the release that has every argument the modules use
      # (auth_token_wo in ../router); docs/deploy.md "How Terraform is checked".
      source  = "hashicorp/aws"
      version = ">= 6.62"
    }
  }
}
