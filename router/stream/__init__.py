"""The stream path: SSE framing, relaying, finish tracking, hedging and resume."""
