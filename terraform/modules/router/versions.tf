terraform {
  # 1.11: write-only arguments (value_wo, auth_token_wo) and ephemeral
  # resources keep the node token and the registry's AUTH token out of state.
  required_version = ">= 1.11"

  required_providers {
    aws = {
      # auth_token_wo on aws_elasticache_replication_group needs a 6.x
      # release that has it (hashicorp/terraform-provider-aws#49268).
      source  = "hashicorp/aws"
      version = ">= 6.0"
    }
    random = {
      # ephemeral "random_password"
      source  = "hashicorp/random"
      version = ">= 3.7"
    }
  }
}
