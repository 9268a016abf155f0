terraform {
  # Provider-free on purpose, like ../config: the capacity pieces' names, event
  # patterns, IAM and queue policy documents and scaling settings are pure
  # logic, so `terraform test` checks the rendered documents offline.
  required_version = ">= 1.6"
}
