"""The HTTP layer: the node client, gunicorn workers and the guards against clients."""
