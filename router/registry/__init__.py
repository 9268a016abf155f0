"""The node registry: state, its Redis store and sync, health, and choosing a node."""
