"""IMDSv2 session tokens: issued by ``PUT /latest/api/token``, checked on every read.

Expiry is exact against the injected clock (a token dies once ``now >=
issued + ttl``), and a read reports the token's remaining whole seconds,
rounded up, as IMDS does in its TTL header.
"""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Callable, Mapping

Clock = Callable[[], float]

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MIN_TTL_S, MAX_TTL_S = 1, 21600


def requested_ttl(headers: Mapping[str, str]) -> int | None:
    """The TTL a token PUT asks for (lower-case header keys); None when missing or out of range."""
    raw = headers.get(TTL_HEADER.lower())
    ttl = int(raw) if raw is not None and raw.strip().isdigit() else None
    if ttl is None or not MIN_TTL_S <= ttl <= MAX_TTL_S:
        return None
    return ttl


class TokenStore:
    """The live tokens and their expiry (clock seconds)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._expiry: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def issue(self, ttl: int) -> str:
        now = self.clock()
        self.drop_expired(now)
        token = base64.b64encode(secrets.token_bytes(42)).decode()
        self._expiry[token] = now + ttl
        return token

    def remaining(self, token: str | None) -> int | None:
        """Whole seconds the token has left, or None when missing, unknown or expired."""
        if not token:
            return None
        expires = self._expiry.get(token)
        if expires is None:
            return None
        left = expires - self.clock()
        if left <= 0:
            del self._expiry[token]
            return None
        return max(1, math.ceil(left))

    def drop_expired(self, now: float) -> None:
        for token in [t for t, exp in self._expiry.items() if exp <= now]:
            del self._expiry[token]

    def revoke_all(self) -> None:
        self._expiry.clear()
