"""The IMDSv2 emulator's brain: instance data, session tokens, events, outages.

A plain class with an injectable clock so the time rules (token expiry, a
spot ``time`` frozen when the notice appears, scheduled-event windows) can be
tested without a server or real waiting. :mod:`spotrelay.sim.imds_server` is
a thin aiohttp layer that turns requests into calls on :class:`ImdsState` and
its :class:`Reply` objects back into responses.

What it emulates is an instance launched with ``HttpTokens=required``: a
session token from ``PUT /latest/api/token`` is needed for every read, and
IMDSv1 (token-less GETs) gets 401, as on such a real instance.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MIN_TTL_S, MAX_TTL_S = 1, 21600

DEFAULT_LEAD_S = 120.0
SPOT_ACTIONS = ("terminate", "stop", "hibernate")
SCHEDULED_CODES = (
    "instance-reboot",
    "system-reboot",
    "system-maintenance",
    "instance-retirement",
    "instance-stop",
)
# Steady states Auto Scaling writes to autoscaling/target-lifecycle-state.
TARGET_LIFECYCLE_STATES = (
    "InService",
    "Terminated",
    "Detached",
    "Standby",
    "Warmed:Hibernated",
    "Warmed:Running",
    "Warmed:Stopped",
    "Warmed:Terminated",
)
OUTAGE_MODES = ("error", "stall", "none")
MAX_OUTAGE_S = 3600.0
MAX_LEAD_S = 7 * 86400.0

# Descriptions AWS uses for these codes (the text varies; these are typical).
_DESCRIPTIONS = {
    "instance-reboot": "scheduled reboot",
    "system-reboot": "scheduled reboot",
    "system-maintenance": "scheduled maintenance",
    "instance-retirement": "The instance is running on degraded hardware",
    "instance-stop": "The instance is running on degraded hardware",
}
# Stop and retirement events have no end; the others a window (AWS omits NotAfter then).
_DEFAULT_DURATION_S = {
    "instance-reboot": 3600.0,
    "system-reboot": 3600.0,
    "system-maintenance": 3600.0,
    "instance-retirement": None,
    "instance-stop": None,
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def iso_utc(t: float) -> str:
    """``2024-05-01T12:00:00Z``: the format of spot and rebalance notices."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def aws_event_time(t: float) -> str:
    """``21 Jan 2019 09:00:43 GMT``: scheduled-event times (day not zero-padded)."""
    g = time.gmtime(t)
    clock = f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}"
    return f"{g.tm_mday} {_MONTHS[g.tm_mon - 1]} {g.tm_year} {clock} GMT"


def stable_instance_id(seed: str) -> str:
    """A real-looking 17-hex-digit instance id that is the same for the same seed."""
    return "i-0" + hashlib.sha256(seed.encode()).hexdigest()[:16]


def aws_json(doc: Any) -> str:
    """JSON laid out the way IMDS prints its documents (two-space indent, ``" : "``)."""
    return json.dumps(doc, indent=2, separators=(",", " : "))


def error_page(status: int) -> str:
    """The small XHTML page real IMDS sends with 4xx/5xx answers."""
    title = f"{status} - {_STATUS_TEXT.get(status, 'Error')}"
    return (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        f" <head>\n  <title>{title}</title>\n </head>\n"
        f" <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    )


@dataclass(frozen=True)
class InstanceInfo:
    """The static facts of the emulated instance."""

    instance_id: str
    instance_type: str = "g6.xlarge"
    local_ipv4: str = "127.0.0.1"
    availability_zone: str = "us-east-1a"
    lifecycle: str = "spot"
    ami_id: str = "ami-0abcdef1234567890"
    account_id: str = "123456789012"
    iam_role: str | None = None
    architecture: str = "x86_64"

    @property
    def region(self) -> str:
        return self.availability_zone[:-1]

    @property
    def local_hostname(self) -> str:
        name = "ip-" + self.local_ipv4.replace(".", "-")
        if self.region == "us-east-1":
            return f"{name}.ec2.internal"
        return f"{name}.{self.region}.compute.internal"

    @property
    def mac(self) -> str:
        digest = hashlib.sha256(self.instance_id.encode()).digest()
        return ":".join(f"{b:02x}" for b in (0x0E, *digest[:5]))

    @property
    def reservation_id(self) -> str:
        return "r-0" + hashlib.sha256(b"r" + self.instance_id.encode()).hexdigest()[:16]


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


class ControlError(ValueError):
    """A bad control request; ``status`` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SpotNotice:
    """A spot interruption notice; its texts are fixed when it is created."""

    action: str
    notice_at: float
    at: float

    @property
    def time_text(self) -> str:
        return iso_utc(self.at)

    def instance_action(self) -> str:
        return json.dumps({"action": self.action, "time": self.time_text})


@dataclass(frozen=True)
class Outage:
    mode: str
    status: int
    until: float


COUNTERS = (
    "token_puts",
    "metadata_requests",
    "bad_request_400",
    "unauthorized_401",
    "forbidden_403",
    "not_found_404",
    "outage_hits",
)


class ImdsState:
    """Everything the emulator knows; every method is synchronous and clock-driven."""

    def __init__(
        self,
        instance: InstanceInfo,
        *,
        clock: Clock = time.time,
        target_lifecycle_state: str | None = "InService",
    ) -> None:
        if target_lifecycle_state not in (None, *TARGET_LIFECYCLE_STATES):
            raise ValueError(f"unknown target lifecycle state {target_lifecycle_state!r}")
        self.instance = instance
        self.clock = clock
        self.started_at = clock()
        self._initial_target_state = target_lifecycle_state
        self.tokens: dict[str, float] = {}  # token -> expiry (clock seconds)
        self._creds_issued_at: float | None = None
        self._creds: dict[str, str] = {}
        self._reset_events()
        self.counts = dict.fromkeys(COUNTERS, 0)

    def _reset_events(self) -> None:
        self.spot: SpotNotice | None = None
        self.rebalance_at: float | None = None
        self.target_lifecycle_state = self._initial_target_state
        self.scheduled: list[dict[str, str]] = []
        self.outage_state: Outage | None = None

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
        raw = headers.get(TTL_HEADER.lower())
        ttl = int(raw) if raw is not None and raw.strip().isdigit() else None
        if ttl is None or not MIN_TTL_S <= ttl <= MAX_TTL_S:
            self.counts["bad_request_400"] += 1
            return Reply.error(400)
        now = self.clock()
        self._drop_expired(now)
        token = base64.b64encode(secrets.token_bytes(42)).decode()
        self.tokens[token] = now + ttl
        self.counts["token_puts"] += 1
        return Reply(200, token, headers={TTL_HEADER: str(ttl)})

    def token_remaining(self, token: str | None) -> int | None:
        """Whole seconds the token has left, or None when missing, unknown or expired."""
        if not token:
            return None
        expires = self.tokens.get(token)
        if expires is None:
            return None
        left = expires - self.clock()
        if left <= 0:
            del self.tokens[token]
            return None
        return max(1, math.ceil(left))

    def get(self, path: str, token: str | None) -> Reply:
        """A GET/HEAD under the metadata tree, token first, then the path."""
        self.counts["metadata_requests"] += 1
        remaining = self.token_remaining(token)
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

    def _drop_expired(self, now: float) -> None:
        for token in [t for t, exp in self.tokens.items() if exp <= now]:
            del self.tokens[token]

    # ------------------------------------------------------------------ the tree

    def _tree(self) -> dict[str, Any]:
        """The metadata served right now, as nested dicts (dirs) and strings (leaves)."""
        i = self.instance
        events: dict[str, Any] = {
            "maintenance": {"history": "[]", "scheduled": aws_json(self.scheduled)}
        }
        if self.rebalance_at is not None:
            events["recommendations"] = {
                "rebalance": json.dumps({"noticeTime": iso_utc(self.rebalance_at)})
            }
        md: dict[str, Any] = {
            "ami-id": i.ami_id,
            "ami-launch-index": "0",
            "ami-manifest-path": "(unknown)",
            "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
            "events": events,
            "hostname": i.local_hostname,
            "instance-action": "none",
            "instance-id": i.instance_id,
            "instance-life-cycle": i.lifecycle,
            "instance-type": i.instance_type,
            "local-hostname": i.local_hostname,
            "local-ipv4": i.local_ipv4,
            "mac": i.mac,
            "placement": {"availability-zone": i.availability_zone, "region": i.region},
            "reservation-id": i.reservation_id,
            "security-groups": "spotrelay-gpu-pool",
            "services": {"domain": "amazonaws.com", "partition": "aws"},
        }
        if self.target_lifecycle_state is not None:
            md["autoscaling"] = {"target-lifecycle-state": self.target_lifecycle_state}
        if i.iam_role:
            md["iam"] = {
                "info": self._iam_info(),
                "security-credentials": {i.iam_role: self._credentials()},
            }
        if self.spot is not None:
            spot = {"instance-action": self.spot.instance_action()}
            if self.spot.action == "terminate":
                spot["termination-time"] = self.spot.time_text
            md["spot"] = spot
        return {
            "dynamic": {"instance-identity": {"document": self.identity_document()}},
            "meta-data": dict(sorted(md.items())),
        }

    def identity_document(self) -> str:
        i = self.instance
        return aws_json(
            {
                "accountId": i.account_id,
                "architecture": i.architecture,
                "availabilityZone": i.availability_zone,
                "billingProducts": None,
                "devpayProductCodes": None,
                "marketplaceProductCodes": None,
                "imageId": i.ami_id,
                "instanceId": i.instance_id,
                "instanceType": i.instance_type,
                "kernelId": None,
                "pendingTime": iso_utc(self.started_at),
                "privateIp": i.local_ipv4,
                "ramdiskId": None,
                "region": i.region,
                "version": "2017-09-30",
            }
        )

    def _iam_info(self) -> str:
        i = self.instance
        profile_id = "AIPA" + hashlib.sha256(i.instance_id.encode()).hexdigest()[:17].upper()
        return aws_json(
            {
                "Code": "Success",
                "LastUpdated": iso_utc(self.started_at),
                "InstanceProfileArn": f"arn:aws:iam::{i.account_id}:instance-profile/{i.iam_role}",
                "InstanceProfileId": profile_id,
            }
        )

    def _credentials(self) -> str:
        """Fake temporary credentials in IMDS's format, rotated hourly like the real ones."""
        now = self.clock()
        if self._creds_issued_at is None or now - self._creds_issued_at >= 3600:
            alnum = string.ascii_uppercase + string.digits
            self._creds_issued_at = now
            self._creds = {
                "AccessKeyId": "ASIA" + "".join(secrets.choice(alnum) for _ in range(16)),
                "SecretAccessKey": base64.b64encode(secrets.token_bytes(30)).decode(),
                "Token": base64.b64encode(secrets.token_bytes(120)).decode(),
            }
        issued = self._creds_issued_at
        return aws_json(
            {
                "Code": "Success",
                "LastUpdated": iso_utc(issued),
                "Type": "AWS-HMAC",
                **self._creds,
                "Expiration": iso_utc(issued + 6 * 3600),
            }
        )

    # ------------------------------------------------------------------ outages

    def outage(self) -> Outage | None:
        """The outage in force now, if any (an expired one is cleared)."""
        if self.outage_state is not None and self.clock() >= self.outage_state.until:
            self.outage_state = None
        return self.outage_state

    # ------------------------------------------------------------------ control

    def control(self, name: str, body: Any) -> dict[str, Any]:
        """Run control action ``name`` with its decoded JSON body; returns the new state."""
        actions: dict[str, Callable[[dict[str, Any]], None]] = {
            "spot": self._control_spot,
            "rebalance": self._control_rebalance,
            "lifecycle": self._control_lifecycle,
            "scheduled": self._control_scheduled,
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

    def _require_spot(self, what: str) -> None:
        if self.instance.lifecycle != "spot":
            raise ControlError(
                f"{what} only exist on spot instances; this one is {self.instance.lifecycle}",
                status=409,
            )

    def _control_spot(self, body: dict[str, Any]) -> None:
        _only(body, "action", "lead_s")
        self._require_spot("spot interruption notices")
        action = _choice(body, "action", "terminate", SPOT_ACTIONS)
        # Hibernation starts at once: AWS gives no two-minute warning for it.
        default_lead = 0.0 if action == "hibernate" else DEFAULT_LEAD_S
        lead = _float(body, "lead_s", default_lead, 0, MAX_LEAD_S)
        now = self.clock()
        self.spot = SpotNotice(action, now, now + lead)

    def _control_rebalance(self, body: dict[str, Any]) -> None:
        _only(body, "lead_s")  # accepted for symmetry with spot; a rebalance has no deadline
        self._require_spot("rebalance recommendations")
        _number(body, "lead_s", 0.0, 0, MAX_LEAD_S)
        if self.rebalance_at is None:
            self.rebalance_at = self.clock()

    def _control_lifecycle(self, body: dict[str, Any]) -> None:
        _only(body, "state")
        if "state" not in body:
            raise ControlError("'state' is required: one of " + ", ".join(TARGET_LIFECYCLE_STATES))
        state = body["state"]
        if state is None or state == "none":
            self.target_lifecycle_state = None
            return
        if state not in TARGET_LIFECYCLE_STATES:
            raise ControlError(
                f"'state' must be one of {', '.join(TARGET_LIFECYCLE_STATES)} or null; "
                f"got {state!r}"
            )
        self.target_lifecycle_state = state

    def _control_scheduled(self, body: dict[str, Any]) -> None:
        _only(body, "code", "not_before_s", "duration_s", "not_before_deadline_s", "description")
        code = _choice(body, "code", "system-reboot", SCHEDULED_CODES)
        not_before_s = _float(body, "not_before_s", 600.0, 0, MAX_LEAD_S)
        duration = _number(
            body, "duration_s", _DEFAULT_DURATION_S[code], 0, MAX_LEAD_S, nullable=True
        )
        deadline_s = _number(body, "not_before_deadline_s", None, 0, MAX_LEAD_S)
        description = body.get("description", _DESCRIPTIONS[code])
        if not isinstance(description, str) or not description:
            raise ControlError("'description' must be a non-empty string")
        now = self.clock()
        start = now + not_before_s
        event = {
            "NotBefore": aws_event_time(start),
            "Code": code,
            "Description": description,
            "EventId": "instance-event-0" + secrets.token_hex(8),
        }
        if duration is not None:
            event["NotAfter"] = aws_event_time(start + duration)
        if deadline_s is not None:
            if deadline_s < not_before_s:
                raise ControlError("'not_before_deadline_s' must be >= 'not_before_s'")
            event["NotBeforeDeadline"] = aws_event_time(now + deadline_s)
        event["State"] = "active"
        self.scheduled.append(event)

    def _control_outage(self, body: dict[str, Any]) -> None:
        _only(body, "mode", "status", "duration_s")
        if "mode" not in body:
            raise ControlError("'mode' is required: one of " + ", ".join(OUTAGE_MODES))
        mode = _choice(body, "mode", "error", OUTAGE_MODES)
        if mode == "none":
            self.outage_state = None
            return
        status = _number(body, "status", 500, 400, 599)
        if status is None or status != int(status):
            raise ControlError("'status' must be an integer HTTP status 400-599")
        if "duration_s" not in body:
            raise ControlError("'duration_s' is required for an outage")
        duration = _number(body, "duration_s", None, 0, MAX_OUTAGE_S)
        if not duration:
            raise ControlError("'duration_s' must be > 0")
        self.outage_state = Outage(mode, int(status), self.clock() + duration)

    def _control_revoke_tokens(self, body: dict[str, Any]) -> None:
        _only(body)
        self.tokens.clear()

    def _control_reset(self, body: dict[str, Any]) -> None:
        """Back to a freshly booted instance's events; tokens stay valid; counters zeroed."""
        _only(body)
        self._reset_events()
        self.counts = dict.fromkeys(COUNTERS, 0)

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /_control/state`` shows (JSON-ready)."""
        now = self.clock()
        i = self.instance
        outage = self.outage()
        self._drop_expired(now)
        spot = None
        if self.spot is not None:
            spot = {
                "action": self.spot.action,
                "time": self.spot.time_text,
                "notice_time": iso_utc(self.spot.notice_at),
                "seconds_left": round(self.spot.at - now, 3),
            }
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
            "events": {
                "spot": spot,
                "rebalance": (
                    {"noticeTime": iso_utc(self.rebalance_at)}
                    if self.rebalance_at is not None
                    else None
                ),
                "target_lifecycle_state": self.target_lifecycle_state,
                "scheduled": list(self.scheduled),
            },
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


# ---------------------------------------------------------------------- body checks


def _only(body: dict[str, Any], *allowed: str) -> None:
    for key in body:
        if key not in allowed:
            shown = ", ".join(allowed) if allowed else "none"
            raise ControlError(f"unknown key '{key}' (allowed: {shown})")


def _choice(body: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = body.get(key, default)
    if value not in choices:
        raise ControlError(f"'{key}' must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _float(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """:func:`_number` with a default and no null: always a number."""
    value = _number(body, key, default, low, high)
    assert value is not None
    return value


def _number(
    body: dict[str, Any],
    key: str,
    default: float | None,
    low: float,
    high: float,
    *,
    nullable: bool = False,
) -> float | None:
    value = body.get(key, default)
    if value is None:
        if key in body and not nullable and default is not None:
            raise ControlError(f"'{key}' must be a number; got null")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ControlError(f"'{key}' must be a number; got {value!r}")
    if not low <= value <= high:
        raise ControlError(f"'{key}' must be between {low:g} and {high:g}; got {value!r}")
    return float(value)
