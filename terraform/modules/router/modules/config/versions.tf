terraform {
  # Provider-free on purpose: everything here is pure logic (validation,
  # tags, rendering) so `terraform test` runs it offline.
  required_version = ">= 1.11"
}
