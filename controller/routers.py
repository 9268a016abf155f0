"""The controller's view of the routers: ready-node count and drain by instance id.

Plain ``urllib`` (the Lambda runtime has no third-party HTTP client). The
controller asks every URL it is given: with the shared registry that is one
internal endpoint in front of all routers (any answer is the fleet's view);
with routers that each keep their own in-memory registry it is every router.
Either way the ready count is the largest any answer reports (a router that
restarted and knows fewer nodes must not trigger a fallback), and a drain
goes to all.

The node token is rotated by writing a new value to its SSM parameter (the
agents re-read it at restart). A controller that kept the old one would turn
every drain into a 401 and every interruption message into a retry that ends
in the dead-letter queue, so a 401 re-reads the token from its source (at
most once per ``refresh_every_s``) and retries the call once with the new
value.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .interruptions import DrainResult, RouterUnreachable

log = logging.getLogger("spotrelay.controller")


class RouterError(RouterUnreachable):
    """No router could be reached; the event is retried (SQS redelivers it)."""


@dataclass(frozen=True)
class NodeSighting:
    """One router's view of a node: how long its agent has been silent, its open requests."""

    silent_s: float  # since the agent's last heartbeat reached this router
    in_flight: int


class RouterFleet:
    def __init__(
        self,
        urls: list[str],
        token: str,
        *,
        timeout_s: float = 5.0,
        token_source: Callable[[], str] | None = None,
        refresh_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.token = token
        self.timeout_s = timeout_s
        self.token_source = token_source
        self.refresh_every_s = refresh_every_s
        self.clock = clock
        self._refreshed_at: float | None = None

    def _call(self, method: str, url: str) -> tuple[int, Any]:
        status, doc = self._send(method, url)
        if status == 401 and self._refresh_token():
            status, doc = self._send(method, url)
        return status, doc

    def _refresh_token(self) -> bool:
        """Re-read the token after a 401; True when it changed (worth one retry)."""
        now = self.clock()
        if self.token_source is None:
            return False
        if self._refreshed_at is not None and now - self._refreshed_at < self.refresh_every_s:
            return False
        self._refreshed_at = now
        try:
            fresh = self.token_source()
        except Exception as exc:  # the source is down: keep the old token, the message retries
            log.warning("a router answered 401 and the node token could not be re-read: %s", exc)
            return False
        if not fresh or fresh == self.token:
            log.warning("a router answered 401 to the current node token (unchanged at its source)")
            return False
        log.info("a router answered 401: re-read the node token (it was rotated); retrying")
        self.token = fresh
        return True

    def _send(self, method: str, url: str) -> tuple[int, Any]:
        req = urllib.request.Request(
            url,
            method=method,
            data=b"{}" if method == "POST" else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def _node_lists(self) -> list[list[dict[str, Any]]]:
        """``GET /nodes`` of every router that answers it (unreachable ones are logged)."""
        lists = []
        for url in self.urls:
            try:
                status, doc = self._call("GET", url + "/nodes")
            except (OSError, ValueError) as exc:
                log.warning("router %s unreachable: %s", url, exc)
                continue
            if status == 200 and isinstance(doc, list):
                lists.append([n for n in doc if isinstance(n, dict)])
        return lists

    def ready_nodes(self) -> int | None:
        """The most ready nodes any router reports; None when no router answers."""
        counts = [
            sum(1 for n in nodes if n.get("state") == "ready") for nodes in self._node_lists()
        ]
        return max(counts) if counts else None

    def sightings(self, instance_id: str) -> list[NodeSighting] | None:
        """Every answering router's view of the instance's node(s); None when none answered."""
        lists = self._node_lists()
        if not lists:
            return None
        return [
            NodeSighting(float(n.get("last_seen_s_ago") or 0), int(n.get("in_flight") or 0))
            for nodes in lists
            for n in nodes
            if n.get("instance_id") == instance_id
        ]

    def drain_instance(self, instance_id: str) -> DrainResult:
        """``POST /instances/{id}/drain`` on every router; raises if none answered."""
        newly = already = answered = 0
        for url in self.urls:
            try:
                status, doc = self._call("POST", f"{url}/instances/{instance_id}/drain")
            except (OSError, ValueError) as exc:
                log.warning("router %s unreachable: %s", url, exc)
                continue
            if status == 404:
                answered += 1
            elif status == 200 and isinstance(doc, dict):
                answered += 1
                for node in doc.get("nodes", []):
                    if node.get("already_draining"):
                        already += 1
                    else:
                        newly += 1
            else:
                log.warning("router %s answered %s to a drain of %s", url, status, instance_id)
        if not answered:
            raise RouterError(f"no router answered the drain of {instance_id}")
        return DrainResult(newly=newly, already=already)
