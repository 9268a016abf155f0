"""The spotrelay router: OpenAI-compatible proxy with registry, balancing, retry and resume."""
