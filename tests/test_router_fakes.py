"""In-memory stand-ins for node connections, shared by the router's unit tests (no tests here).

The router's plain classes talk to nodes through a urllib3-like pool
(``urlopen`` returning a response object). These fakes script what a node
does — answer, fail to connect, reset, send SSE chunks then break — so the
retry, relay and routing logic can be tested fast and deterministically.
The integration tests (``test_router_integration.py``) use real simulators.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from urllib3 import HTTPHeaderDict
from urllib3.exceptions import NewConnectionError, ProtocolError, ReadTimeoutError

from spotrelay.router.netpolicy import NodeTarget
from spotrelay.router.settings import RouterConfig


def sse(doc: Any) -> bytes:
    return b"data: " + (doc if isinstance(doc, bytes) else json.dumps(doc).encode()) + b"\n\n"


def chunk(text: str, finish: str | None = None) -> bytes:
    return sse({"id": "cmpl-1", "object": "text_completion", "model": "m",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}]})  # fmt: skip


DONE = b"data: [DONE]\n\n"


class FakeResp:
    """A urllib3 response: a whole body, or chunks (bytes or exceptions to raise)."""

    def __init__(
        self,
        status: int = 200,
        body: bytes = b'{"ok": true}',
        *,
        chunks: list[Any] | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        read_error: BaseException | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.chunks = chunks
        self.chunked = chunks is not None
        ct = content_type or ("text/event-stream" if chunks is not None else "application/json")
        self.headers = HTTPHeaderDict({"Content-Type": ct, **(headers or {})})
        self.read_error = read_error
        self.closed = False
        self.released = False
        self.connection = None

    def supports_chunked_reads(self) -> bool:
        return True

    def read_chunked(self, decode_content: bool = False):
        for item in self.chunks or []:
            if isinstance(item, BaseException):
                raise item
            if callable(item):
                item()
                continue
            yield item

    def read(self) -> bytes:
        if self.read_error:
            raise self.read_error
        if self.chunks is not None:
            return b"".join(self.read_chunked())
        return self.body

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True


def refused() -> NewConnectionError:
    return NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused")


def reset() -> ProtocolError:
    return ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))


def read_timeout() -> ReadTimeoutError:
    return ReadTimeoutError(None, "/v1/completions", "Read timed out.")


Behaviour = Callable[[dict[str, Any]], FakeResp]


class FakePool:
    """One node's pool: ``behaviour(call)`` returns a FakeResp or raises."""

    def __init__(self, target: NodeTarget, fleet: FakeFleet) -> None:
        self.target = target
        self.fleet = fleet
        self.closed = False

    def urlopen(self, method: str, url: str, body: bytes | None = None, headers=None, **kw):
        call = {"method": method, "url": url, "body": body, "headers": dict(headers or {}),
                "target": self.target.url, **kw}  # fmt: skip
        self.fleet.calls.append(call)
        behaviour = self.fleet.behaviour.get(self.target.url, lambda c: FakeResp())
        return behaviour(call)

    def close(self) -> None:
        self.closed = True


class FakeFleet:
    """Behaviour per node URL, and every call made (in order)."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.calls: list[dict[str, Any]] = []
        self.pools: list[FakePool] = []

    def pool_factory(self, target: NodeTarget) -> FakePool:
        pool = FakePool(target, self)
        self.pools.append(pool)
        return pool

    def calls_to(self, url: str, path: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["target"] == url and (path is None or c["url"] == path)]


def raising(exc_factory: Callable[[], BaseException]) -> Behaviour:
    def behaviour(call: dict[str, Any]) -> FakeResp:
        raise exc_factory()

    return behaviour


def answering(*responses: Callable[[], FakeResp]) -> Behaviour:
    """Answer with each response factory in turn, repeating the last one."""
    state = {"i": 0}

    def behaviour(call: dict[str, Any]) -> FakeResp:
        i = min(state["i"], len(responses) - 1)
        state["i"] += 1
        return responses[i]()

    return behaviour


def fast_config(**sections: dict[str, Any]) -> RouterConfig:
    """A RouterConfig with short waits for tests, plus ``sections`` overrides."""
    from spotrelay.core.config import load

    base: dict[str, dict[str, Any]] = {
        "auth": {"node_token": "node-secret"},
        "routing": {"no_capacity_wait_s": 0.3},
        "retry": {"backoff_base_ms": 1, "backoff_max_ms": 2, "budget_wait_s": 0.2},
        "health": {"probe_interval_s": 0.05},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load(RouterConfig, None, env={}, overrides=base)


def report(url: str, models: list[str] | None = None, state: str = "ready", **extra) -> dict:
    return {"url": url, "models": models or ["m"], "state": state, **extra}
