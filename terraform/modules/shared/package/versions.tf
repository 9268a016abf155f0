terraform {
  # Provider-free: pure logic the config modules call, tested offline
  # (tests/package.tftest.hcl).
  required_version = ">= 1.7"
}
