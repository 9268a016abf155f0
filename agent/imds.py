"""IMDSv2 client: session tokens, one re-fetch on 401, timeouts; never IMDSv1.

Every read carries a session token from ``PUT /latest/api/token``. The token
is cached and replaced at 90 % of its TTL, long before it expires; a 401
(token expired or revoked, e.g. the emulator was reset) drops it, fetches a
fresh one and retries that read once. There is no token-less fallback: an
instance launched with ``HttpTokens=required`` answers IMDSv1 with 401, and
one that does not should not be trusted to be read that way either.

Errors are raised as :class:`ImdsError` with a ``kind`` for metrics; callers
(the monitors) back off with jitter and keep going. urllib3 is used directly
so proxy environment variables never apply to the link-local address.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import urllib3

log = logging.getLogger("spotrelay.agent.imds")

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
REFRESH_AT = 0.9  # fraction of the TTL after which the token is replaced

Clock = Callable[[], float]


class ImdsError(Exception):
    """IMDS did not answer usefully; ``kind`` is a short label for metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Identity:
    """What the instance is; read once at start."""

    instance_id: str
    instance_type: str | None = None
    availability_zone: str | None = None
    region: str | None = None
    lifecycle: str | None = None
    local_ipv4: str | None = None

    def labels(self) -> dict[str, str]:
        """The labels heartbeats carry: instance_type, az, lifecycle."""
        raw = {
            "instance_type": self.instance_type,
            "az": self.availability_zone,
            "lifecycle": self.lifecycle,
        }
        return {k: v for k, v in raw.items() if v}


def region_from_az(az: str | None) -> str | None:
    """``us-east-1a`` → ``us-east-1`` (fallback when ``placement/region`` is absent)."""
    if not az or not az[-1].isalpha():
        return None
    return az[:-1]


class ImdsClient:
    """Thread-safe IMDSv2 reads; one instance shared by every monitor."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 1.0,
        token_ttl_s: int = 21600,
        on_error: Callable[[str], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.base = url.rstrip("/")
        self.token_ttl_s = int(token_ttl_s)
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._http = urllib3.PoolManager(num_pools=1, maxsize=8, retries=False)
        self._on_error = on_error or (lambda kind: None)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.token_fetches = 0

    # ---------------------------------------------------------------- tokens
    def _request(self, method: str, path: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            return self._http.request(
                method,
                self.base + path,
                headers=headers,
                timeout=self._timeout,
                redirect=False,
            )
        except urllib3.exceptions.NewConnectionError as exc:  # (a TimeoutError subclass)
            raise self._error("connect", f"{method} {path}: {exc}") from None
        except urllib3.exceptions.TimeoutError as exc:
            raise self._error("timeout", f"{method} {path}: timed out ({exc})") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error("connect", f"{method} {path}: {exc}") from None

    def _error(self, kind: str, message: str) -> ImdsError:
        self._on_error(kind)
        return ImdsError(kind, message)

    def _status_error(self, method: str, path: str, status: int) -> ImdsError:
        if status == 429:
            kind = "throttled"
        elif status >= 500:
            kind = "server"
        elif status == 401:
            kind = "unauthorized"
        elif status == 403:
            kind = "forbidden"  # IMDS disabled, or a token PUT through a proxy/container hop
        else:
            kind = "http"
        return self._error(kind, f"{method} {path}: HTTP {status}")

    def _fetch_token(self) -> str:
        resp = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl_s)})
        if resp.status != 200:
            raise self._status_error("PUT", TOKEN_PATH, resp.status)
        token = resp.data.decode("ascii", "replace").strip()
        if not token:
            raise self._error("http", "PUT token: empty token")
        ttl = self.token_ttl_s
        with contextlib.suppress(ValueError):
            ttl = int(resp.headers.get(TTL_HEADER, ttl))
        self._token = token
        self._refresh_at = self._clock() + REFRESH_AT * ttl
        self.token_fetches += 1
        log.debug("fetched IMDSv2 token", extra={"ttl_s": ttl})
        return token

    def token(self) -> str:
        """The cached session token, replaced when 90 % of its TTL has passed."""
        with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                return self._fetch_token()
            return self._token

    def _drop_token(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    # ----------------------------------------------------------------- reads
    def get(self, path: str) -> str | None:
        """The text at ``path``; ``None`` on 404 (IMDS's way of saying "no event")."""
        token = self.token()
        resp = self._request("GET", path, {TOKEN_HEADER: token})
        if resp.status == 401:
            log.info("IMDS token refused (expired or revoked); fetching a new one")
            self._drop_token(token)
            token = self.token()
            resp = self._request("GET", path, {TOKEN_HEADER: token})
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise self._status_error("GET", path, resp.status)
        return resp.data.decode("utf-8", "replace")

    def identity(self) -> Identity:
        """Instance id, type, AZ, region, lifecycle and private IPv4 (one read each)."""
        md = "/latest/meta-data/"
        instance_id = self.get(md + "instance-id")
        if not instance_id:
            raise ImdsError("http", "IMDS has no instance-id")
        az = self.get(md + "placement/availability-zone")
        region = self.get(md + "placement/region") or region_from_az(az)
        return Identity(
            instance_id=instance_id.strip(),
            instance_type=_strip(self.get(md + "instance-type")),
            availability_zone=_strip(az),
            region=_strip(region),
            lifecycle=_strip(self.get(md + "instance-life-cycle")),
            local_ipv4=_strip(self.get(md + "local-ipv4")),
        )

    def close(self) -> None:
        self._http.clear()


def _strip(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None
