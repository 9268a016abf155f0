terraform {
  # Provider-free on purpose, like ../config: which alarms exist, on which
  # metrics and thresholds, and the dashboard's JSON are pure logic, so
  # `terraform test` checks them offline. The parent creates the resources.
  required_version = ">= 1.6"
}
