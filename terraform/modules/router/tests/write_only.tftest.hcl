# The registry's AUTH token reaches ElastiCache write-only (auth_token_wo:
# never in state or plan). auth_token_wo exists from hashicorp/aws 6.62 on;
# the offline check's 5.100 provider lacks it, so tests/tfshim/tfreal.py runs
# this file only with a 6.x provider (docs/deploy.md, "How Terraform is
# checked").

mock_provider "aws" {
  source = "../../tests/mocks/aws" # shared mocked values
}

run "auth_token_is_write_only" {
  command = apply

  assert {
    condition     = aws_elasticache_replication_group.registry.auth_token == null && aws_elasticache_replication_group.registry.auth_token_wo_version == 1
    error_message = "The AUTH token is write-only."
  }

  assert {
    condition     = aws_ssm_parameter.registry_auth_token.value_wo_version == aws_elasticache_replication_group.registry.auth_token_wo_version
    error_message = "The registry token's parameter is versioned with the cache's write-only AUTH token."
  }
}
