"""In-memory stand-ins for node connections, shared by the router's unit tests (no tests here).

The router's plain classes talk to nodes through a pool
(``request`` returning a :class:`spotrelay.router.transport.h1.Response`).
These fakes script what a node does — answer, fail to connect, reset, send SSE
chunks then break — so the retry, relay and routing logic can be tested fast and deterministically.
:func:`build` wires a whole RouterService to them, with helpers to register
nodes and send requests through its proxy.
The integration tests (``test_router_integration.py``) use real simulators.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from spotrelay.router.proxy import ProxyRequest, parse_request
from spotrelay.router.service import RouterService
from spotrelay.router.settings import RouterConfig
from spotrelay.router.stream.relay import EndWithError
from spotrelay.router.transport.h1 import ConnectFailed
from spotrelay.router.transport.netpolicy import NodeTarget

#: Node URLs of the fake fleet (private addresses the default network policy allows).
A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"


def sse(doc: Any) -> bytes:
    return b"data: " + (doc if isinstance(doc, bytes) else json.dumps(doc).encode()) + b"\n\n"


def chunk(text: str, finish: str | None = None) -> bytes:
    return sse({"id": "cmpl-1", "object": "text_completion", "model": "m",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}]})  # fmt: skip


DONE = b"data: [DONE]\n\n"


class FakeResp:
    """A node response (:class:`spotrelay.router.transport.h1.Response`'s interface): a whole body,
    or chunks (bytes, exceptions to raise, or callables to run) that arrive one by one."""

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
        self.chunk_script = chunks
        ct = content_type or ("text/event-stream" if chunks is not None else "application/json")
        self.headers = {"content-type": ct, **{k.lower(): v for k, v in (headers or {}).items()}}
        self.read_error = read_error
        self.complete = False
        self.closed = False
        self.released = False
        self.timeout: float | None = None

    def chunks(self):
        if self.chunk_script is None:
            if self.read_error:
                raise self.read_error
            yield self.body
        else:
            for item in self.chunk_script:
                if isinstance(item, BaseException):
                    raise item
                if callable(item):
                    item()
                    continue
                yield item
        self.complete = True

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def set_timeout(self, seconds: float | None) -> None:
        self.timeout = seconds

    def close(self) -> None:
        self.closed = True

    def interrupt(self) -> None:
        self.closed = True

    def release(self) -> None:
        self.released = True


def refused() -> ConnectFailed:
    return ConnectFailed("connect to 10.0.0.1:8000: [Errno 111] Connection refused")


def reset() -> ConnectionResetError:
    return ConnectionResetError(104, "Connection reset by peer")


def read_timeout() -> TimeoutError:
    return TimeoutError("timed out")


Behaviour = Callable[[dict[str, Any]], FakeResp]


class FakePool:
    """One node's pool: ``behaviour(call)`` returns a FakeResp or raises."""

    def __init__(self, target: NodeTarget, fleet: FakeFleet) -> None:
        self.target = target
        self.fleet = fleet
        self.closed = False

    def request(self, method: str, path: str, *, headers=None, body: bytes = b"", **timeouts):
        call = {"method": method, "url": path, "body": body, "headers": dict(headers or {}),
                "target": self.target.url, **timeouts}  # fmt: skip
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
        # Flask's test client has no listeners to tell apart: one app serves both planes.
        "server": {"control_on_main_port": True},
        "routing": {"no_capacity_wait_s": 0.3},
        "retry": {"backoff_base_ms": 1, "backoff_max_ms": 2, "budget_wait_s": 0.2},
        "health": {"probe_interval_s": 0.05},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load(RouterConfig, None, env={}, overrides=base)


def report(url: str, models: list[str] | None = None, state: str = "ready", **extra) -> dict:
    return {"url": url, "models": models or ["m"], "state": state, **extra}


def build(*, handler_factory=None, dns=None, **sections):
    """A RouterService whose nodes are a FakeFleet: the router's logic with no sockets.

    ``dns`` maps host names to addresses; ``sections`` override :func:`fast_config`.
    """
    fleet = FakeFleet()
    kwargs = {}
    if dns is not None:
        kwargs["resolver"] = lambda host, port: dns[host]
    svc = RouterService(
        fast_config(**sections),
        "node-secret",
        pool_factory=fleet.pool_factory,
        # The seam's default (no resume): resume has its own tests.
        stream_handler_factory=handler_factory or (lambda req, proxy: EndWithError()),
        **kwargs,
    )
    return svc, fleet


def register(svc, node_id, url, models=("m",), state="ready"):
    """Register a node through the control-plane call (so its URL is vetted); its registry entry."""
    result = svc.put_node(node_id, json.dumps(report(url, list(models), state)).encode())
    assert result.status == 200, result.doc
    return svc.registry.get(node_id)


def request(svc, body=None, *, path="/v1/completions", rid="req-1", session=None) -> ProxyRequest:
    """A parsed data-plane request as the Flask route would hand it to the proxy."""
    doc = {"model": "m", "prompt": "hi"} if body is None else body
    return parse_request(
        path,
        json.dumps(doc).encode(),
        request_id=rid,
        received=time.monotonic(),
        deadline_s=svc.cfg.timeouts.request_deadline_s,
        session_key=session,
    )


def body_of(resp) -> bytes:
    """The whole body of a proxy answer, a streamed one read to the end and closed."""
    if isinstance(resp.body, bytes):
        return resp.body
    data = b"".join(resp.body)
    resp.body.close()
    return data
