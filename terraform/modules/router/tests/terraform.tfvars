# Inputs every router test file shares (terraform test reads this file;
# a file's or a run's own variables win).

name                     = "llm"
vpc_id                   = "vpc-0123456789abcdef0"
subnet_ids               = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
agent_security_group_ids = ["sg-0123456789abcdef0"]
load_balancer = {
  subnet_ids    = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  allowed_cidrs = ["10.1.0.0/16"]
}
spotrelay_pip_spec = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
spotrelay_sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
