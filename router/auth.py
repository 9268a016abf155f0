"""Bearer-token checks: the node token (control plane) and optional API keys (data plane).

Comparisons use :func:`hmac.compare_digest` so response timing does not
reveal how much of a guessed token was right. Every configured API key is
compared (no early exit) for the same reason.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def bearer(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not header_value:
        return None
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


class TokenCheck:
    """Accepts a request when its bearer token equals one of the configured secrets."""

    def __init__(self, secrets: Iterable[str]):
        self._secrets = [s.encode() for s in secrets if s]

    @property
    def enabled(self) -> bool:
        return bool(self._secrets)

    def allows(self, header_value: str | None) -> bool:
        token = bearer(header_value)
        if token is None:
            return False
        given = token.encode()
        ok = False
        for secret in self._secrets:
            ok |= hmac.compare_digest(given, secret)
        return ok


class ControlPlaneAuth(TokenCheck):
    """The node token: one secret, always required."""

    def __init__(self, node_token: str):
        if not node_token:
            raise ValueError("the control plane needs a node token")
        super().__init__([node_token])


class DataPlaneAuth(TokenCheck):
    """API keys for clients; with none configured, every client is accepted."""

    def allows(self, header_value: str | None) -> bool:
        return True if not self.enabled else super().allows(header_value)
