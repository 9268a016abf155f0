terraform {
  # Provider-free: pure logic the config modules call, tested offline through
  # their tests.
  required_version = ">= 1.7"
}
