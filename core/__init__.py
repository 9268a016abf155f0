"""Shared pieces of spotrelay: config loading, logging, the node protocol, the CLI."""
