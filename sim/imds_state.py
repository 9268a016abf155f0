"""The IMDSv2 emulator's brain: one request in, one :class:`Reply` out.

A plain class with an injectable clock so the time rules (token expiry, a
spot ``time`` frozen when the notice appears, scheduled-event windows,
outages) can be tested without a server or real waiting.
:mod:`spotrelay.sim.imds_server` is a thin aiohttp layer that turns requests
into calls on :class:`ImdsState` and its :class:`Reply` objects back into
responses.

:class:`ImdsState` serves requests, injects outages and counts what it
answered; the parts it joins have one job each: session tokens
(:mod:`.imds_tokens`), the instance's own documents (:mod:`.imds_instance`),
the events the control API sets (:mod:`.imds_event_state`).

What it emulates is an instance launched with ``HttpTokens=required``: a
session token from ``PUT /latest/api/token`` is needed for every read, and
IMDSv1 (token-less GETs) gets 401, as on such a real instance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .imds_control import ControlError, choice, number, only
from .imds_event_state import InstanceEvents
from .imds_format import error_page
from .imds_instance import Clock, InstanceDocs, InstanceInfo
from .imds_tokens import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER, TokenStore, requested_ttl

OUTAGE_MODES = ("error", "stall", "none")
MAX_OUTAGE_S = 3600.0

COUNTERS = (
    "token_puts",
    "metadata_requests",
    "bad_request_400",
    "unauthorized_401",
    "forbidden_403",
    "not_found_404",
    "outage_hits",
)


@dataclass
class Reply:
    """What to send back: the server copies it into an HTTP response verbatim."""

    status: int
    body: str = ""
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, error_page(status), "text/html", headers or {})


@dataclass(frozen=True)
class Stall:
    """Hold the request this many seconds, then ask again (an outage in ``stall`` mode)."""

    seconds: float


@dataclass(frozen=True)
class Outage:
    mode: str
    status: int
    until: float


class ImdsState:
    """Everything the emulator knows; every method is synchronous and clock-driven."""

    def __init__(
        self,
        instance: InstanceInfo,
        *,
        clock: Clock = time.time,
        target_lifecycle_state: str | None = "InService",
    ) -> None:
        self.instance = instance
        self.clock = clock
        self.events = InstanceEvents(instance.lifecycle, clock, target_lifecycle_state)
        self.docs = InstanceDocs(instance, clock, started_at=clock())
        self.tokens = TokenStore(clock)
        self.outage_state: Outage | None = None
        self.counts = dict.fromkeys(COUNTERS, 0)

    # ------------------------------------------------------------------ requests

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], *, stalled: bool = False
    ) -> Reply | Stall:
        """Answer one IMDS request (anything outside ``/_control/``).

        Returns :class:`Stall` while a stall outage is on: the caller waits
        and calls again with ``stalled=True`` (so the hit is counted once).
        """
        outage = self.outage()
        if outage is not None:
            if not stalled:
                self.counts["outage_hits"] += 1
            if outage.mode == "stall":
                return Stall(max(0.0, outage.until - self.clock()))
            return Reply.error(outage.status)
        lower = {k.lower(): v for k, v in headers.items()}
        if path.rstrip("/") == TOKEN_PATH:
            if method != "PUT":
                return Reply.error(405, {"Allow": "PUT"})
            return self.put_token(lower)
        if method not in ("GET", "HEAD"):
            return Reply.error(405, {"Allow": "GET, HEAD"})
        return self.get(path, lower.get(TOKEN_HEADER.lower()))

    def put_token(self, headers: Mapping[str, str]) -> Reply:
        """``PUT /latest/api/token``; ``headers`` keys must be lower-case."""
        if "x-forwarded-for" in headers:
            # IMDSv2 refuses tokens to anything that looks proxied.
            self.counts["forbidden_403"] += 1
            return Reply.error(403)
        ttl = requested_ttl(headers)
        if ttl is None:
            self.counts["bad_request_400"] += 1
            return Reply.error(400)
        token = self.tokens.issue(ttl)
        self.counts["token_puts"] += 1
        return Reply(200, token, headers={TTL_HEADER: str(ttl)})

    def get(self, path: str, token: str | None) -> Reply:
        """A GET/HEAD under the metadata tree, token first, then the path."""
        self.counts["metadata_requests"] += 1
        remaining = self.tokens.remaining(token)
        if remaining is None:
            self.counts["unauthorized_401"] += 1
            return Reply.error(401)
        ttl = {TTL_HEADER: str(remaining)}
        node: Any = {"latest": self._tree()}
        for segment in (s for s in path.split("/") if s):
            if not isinstance(node, dict) or segment not in node:
                self.counts["not_found_404"] += 1
                return Reply.error(404, ttl)
            node = node[segment]
        if isinstance(node, dict):
            listing = "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())
            return Reply(200, listing, headers=ttl)
        return Reply(200, node, headers=ttl)

    def _tree(self) -> dict[str, Any]:
        """The metadata served right now, as nested dicts (dirs) and strings (leaves)."""
        md = {**self.docs.meta_data(), **self.events.meta_data()}
        return {
            "dynamic": {"instance-identity": {"document": self.docs.identity_document()}},
            "meta-data": dict(sorted(md.items())),
        }

    def outage(self) -> Outage | None:
        """The outage in force now, if any (an expired one is cleared)."""
        if self.outage_state is not None and self.clock() >= self.outage_state.until:
            self.outage_state = None
        return self.outage_state

    # ------------------------------------------------------------------ control

    def control(self, name: str, body: Any) -> dict[str, Any]:
        """Run control action ``name`` with its decoded JSON body; returns the new state."""
        actions: dict[str, Callable[[dict[str, Any]], None]] = {
            **self.events.actions(),
            "outage": self._control_outage,
            "revoke_tokens": self._control_revoke_tokens,
            "reset": self._control_reset,
        }
        action = actions.get(name)
        if action is None:
            raise ControlError(
                f"unknown control action '{name}'; one of: {', '.join(actions)}", status=404
            )
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        action(body)
        return self.snapshot()

    def _control_outage(self, body: dict[str, Any]) -> None:
        only(body, "mode", "status", "duration_s")
        if "mode" not in body:
            raise ControlError("'mode' is required: one of " + ", ".join(OUTAGE_MODES))
        mode = choice(body, "mode", "error", OUTAGE_MODES)
        if mode == "none":
            self.outage_state = None
            return
        status = number(body, "status", 500, 400, 599)
        if status is None or status != int(status):
            raise ControlError("'status' must be an integer HTTP status 400-599")
        if "duration_s" not in body:
            raise ControlError("'duration_s' is required for an outage")
        duration = number(body, "duration_s", None, 0, MAX_OUTAGE_S)
        if not duration:
            raise ControlError("'duration_s' must be > 0")
        self.outage_state = Outage(mode, int(status), self.clock() + duration)

    def _control_revoke_tokens(self, body: dict[str, Any]) -> None:
        only(body)
        self.tokens.revoke_all()

    def _control_reset(self, body: dict[str, Any]) -> None:
        """Back to a freshly booted instance's events; tokens stay valid; counters zeroed."""
        only(body)
        self.events.reset()
        self.outage_state = None
        self.counts = dict.fromkeys(COUNTERS, 0)

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /_control/state`` shows (JSON-ready)."""
        now = self.clock()
        i = self.instance
        outage = self.outage()
        self.tokens.drop_expired(now)
        return {
            "instance": {
                "instance_id": i.instance_id,
                "instance_type": i.instance_type,
                "local_ipv4": i.local_ipv4,
                "availability_zone": i.availability_zone,
                "region": i.region,
                "lifecycle": i.lifecycle,
                "ami_id": i.ami_id,
                "iam_role": i.iam_role,
            },
            "events": self.events.snapshot(now),
            "outage": (
                {
                    "mode": outage.mode,
                    "status": outage.status,
                    "remaining_s": round(outage.until - now, 3),
                }
                if outage
                else None
            ),
            "tokens": {"active": len(self.tokens)},
            "counts": dict(self.counts),
        }
