"""Talking to the routers: heartbeats (``PUT /nodes/{id}``), drain and deregistration.

One :class:`RouterClient` per configured router; one :class:`RouterLink`
thread per router sends the current :class:`NodeReport` every heartbeat
interval, or at once when woken (state changes must not wait for the next
tick). A slow or dead router therefore never delays the others. The calls
themselves are the shared control-plane client's
(:class:`~spotrelay.core.control_client.ControlClient`), here over a small
urllib3 pool with the agent's own timeouts and no retries of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import urllib3

from spotrelay.core.control_api import NodeList
from spotrelay.core.control_client import ControlClient, ControlError, Reply, lower_headers
from spotrelay.core.protocol import NodeReport, NodeState
from spotrelay.core.ticker import Ticker

log = logging.getLogger("spotrelay.agent.routers")

# A router call that did not succeed; ``status`` is 0 when nothing answered.
RouterError = ControlError


class Urllib3Transport:
    """One attempt per call over a small keep-alive pool; connecting gets at most 2 s."""

    def __init__(self, timeout_s: float) -> None:
        self._http = urllib3.PoolManager(num_pools=1, maxsize=4, retries=False)
        self._timeout = urllib3.Timeout(connect=min(timeout_s, 2.0), read=timeout_s)

    def __call__(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Reply:
        try:
            resp = self._http.request(
                method, url, body=body, headers=dict(headers), timeout=self._timeout,
                redirect=False,
            )  # fmt: skip
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionError(str(exc)) from None
        return Reply(resp.status, resp.data, lower_headers(resp.headers.items()))


class RouterClient:
    """The control-plane calls of one router about this node, with the node's bearer token."""

    def __init__(
        self,
        base_url: str,
        node_id: str,
        token: str | None,
        *,
        timeout_s: float = 2.0,
        dry_run: bool = False,
    ) -> None:
        self.api = ControlClient(base_url, token, Urllib3Transport(timeout_s))
        self.base = self.api.base
        self.node_id = node_id
        self.dry_run = dry_run

    def __repr__(self) -> str:
        return f"RouterClient({self.base})"

    def put(self, report: NodeReport) -> None:
        """Register or heartbeat; raises :class:`RouterError` unless acknowledged (2xx)."""
        if not self.dry_run:
            self.api.put_node(self.node_id, report)

    def drain(self) -> int:
        """``POST /nodes/{id}/drain``; the router's in-flight count (0 if it does not know us)."""
        if self.dry_run:
            return 0
        drained = self.api.drain_node(self.node_id)
        return drained.in_flight if drained else 0

    def delete(self) -> None:
        """Deregister; a 404 (already gone, e.g. dropped by TTL) counts as done."""
        if not self.dry_run:
            self.api.delete_node(self.node_id)

    def nodes(self) -> NodeList:
        """``GET /nodes`` (for ``spotrelay agent check``)."""
        return self.api.nodes().nodes

    def healthz(self) -> int:
        return self.api.healthz()


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
