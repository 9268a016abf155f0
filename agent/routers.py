"""Talking to the routers: heartbeats (``PUT /nodes/{id}``), drain and deregistration.

One :class:`RouterClient` per configured router; one :class:`RouterLink`
thread per router sends the current :class:`NodeReport` every heartbeat
interval, or at once when woken (state changes must not wait for the next
tick). A slow or dead router therefore never delays the others.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import urllib3

from spotrelay.core.protocol import NodeReport, NodeState
from spotrelay.core.ticker import Ticker

log = logging.getLogger("spotrelay.agent.routers")


class RouterError(Exception):
    """A router call that did not succeed; ``status`` is 0 when nothing answered."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class RouterClient:
    """The control-plane calls of one router, with the node's bearer token."""

    def __init__(
        self,
        base_url: str,
        node_id: str,
        token: str | None,
        *,
        timeout_s: float = 2.0,
        dry_run: bool = False,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.node_id = node_id
        self.dry_run = dry_run
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._http = urllib3.PoolManager(num_pools=1, maxsize=4, retries=False)
        self._timeout = urllib3.Timeout(connect=min(timeout_s, 2.0), read=timeout_s)
        self._path = f"/nodes/{quote(node_id, safe='')}"

    def __repr__(self) -> str:
        return f"RouterClient({self.base})"

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        try:
            resp = self._http.request(
                method, self.base + path, body=data, headers=self._headers, timeout=self._timeout
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RouterError(f"{method} {self.base}{path}: {exc}") from None
        try:
            doc = json.loads(resp.data) if resp.data else None
        except ValueError:
            doc = None
        if resp.status == 401:
            raise RouterError(
                f"{method} {self.base}{path}: 401, the router refused the node token", 401
            )
        return resp.status, doc

    def put(self, report: NodeReport) -> None:
        """Register or heartbeat; raises :class:`RouterError` unless acknowledged (2xx)."""
        if self.dry_run:
            return
        status, doc = self._call("PUT", self._path, report.to_json())
        if not 200 <= status < 300:
            raise RouterError(f"PUT {self.base}{self._path}: HTTP {status} {_detail(doc)}", status)

    def drain(self) -> int:
        """``POST /nodes/{id}/drain``; the router's in-flight count (0 if it does not know us)."""
        if self.dry_run:
            return 0
        status, doc = self._call("POST", self._path + "/drain")
        if status == 404:
            return 0
        if not 200 <= status < 300:
            raise RouterError(f"POST {self.base}{self._path}/drain: HTTP {status}", status)
        try:
            return int((doc or {}).get("in_flight", 0))
        except (TypeError, ValueError, AttributeError):
            return 0

    def delete(self) -> None:
        """Deregister; a 404 (already gone, e.g. dropped by TTL) counts as done."""
        if self.dry_run:
            return
        status, _ = self._call("DELETE", self._path)
        if status != 404 and not 200 <= status < 300:
            raise RouterError(f"DELETE {self.base}{self._path}: HTTP {status}", status)

    def nodes(self) -> Any:
        """``GET /nodes`` (for ``spotrelay agent check``)."""
        status, doc = self._call("GET", "/nodes")
        if status != 200:
            raise RouterError(f"GET {self.base}/nodes: HTTP {status}", status)
        return doc

    def healthz(self) -> int:
        try:
            return self._call("GET", "/healthz")[0]
        except RouterError as exc:
            return exc.status


def _detail(doc: Any) -> str:
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            return str(err.get("message", ""))[:200]
        return str(err or "")[:200]
    return ""


class RouterLink(Ticker):
    """Heartbeats to one router until ``stop``; ``report_fn`` says what to send (None: nothing)."""

    def __init__(
        self,
        client: RouterClient,
        interval_s: float,
        report_fn: Callable[[], NodeReport | None],
        stop: threading.Event,
        on_result: Callable[[RouterClient, NodeReport, bool], None] | None = None,
    ) -> None:
        super().__init__(interval_s, stop=stop, immediate=True, name=f"router-{client.base}")
        self.client = client
        self.report_fn = report_fn
        self.on_result = on_result or (lambda client, report, ok: None)
        self.lock = threading.Lock()  # held during a heartbeat; see DrainMachine.quiesce
        self.acked_state: NodeState | None = None
        self.acked_at: float | None = None
        self.failures = 0
        self._last_logged: str | None = None

    def beat(self) -> bool:
        with self.lock:
            return self._beat()

    def _beat(self) -> bool:
        report = self.report_fn()
        if report is None:
            return False
        try:
            self.client.put(report)
        except RouterError as exc:
            self.failures += 1
            self.on_result(self.client, report, False)
            if str(exc) != self._last_logged:
                log.warning("heartbeat failed: %s", exc)
                self._last_logged = str(exc)
            return False
        if self.acked_state != report.state or self._last_logged:
            log.info(
                "router %s acknowledged state %s%s",
                self.client.base,
                report.state,
                " (dry run: not sent)" if self.client.dry_run else "",
            )
        self._last_logged = None
        self.failures = 0
        self.acked_state = report.state
        self.acked_at = time.monotonic()
        self.on_result(self.client, report, True)
        return True

    def tick(self) -> None:
        """One heartbeat; :meth:`wake` sends the current report now instead of at the next."""
        self.beat()
