terraform {
  # 1.11: write-only arguments (value_wo, auth_token_wo) keep the node token
  # and the registry's AUTH token out of state and plan.
  required_version = ">= 1.11"

  required_providers {
    aws = {
      # 6.62: the first release checked to have auth_token_wo on
      # aws_elasticache_replication_group (added by
      # hashicorp/terraform-provider-aws#49268); docs/deploy.md.
      source  = "hashicorp/aws"
      version = ">= 6.62"
    }
  }
}
