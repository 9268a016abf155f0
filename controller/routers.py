"""The controller's view of the routers: ready-node count and drain by instance id.

The calls are the shared control-plane client's
(:class:`~spotrelay.core.control_client.ControlClient`) over plain ``urllib``
(the Lambda runtime has no third-party HTTP client). The
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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from spotrelay.core.control_api import NodeList
from spotrelay.core.control_client import ControlClient, ControlError, UrllibTransport

from .interruptions import DrainResult, RouterUnreachable

log = logging.getLogger("spotrelay.controller")

_T = TypeVar("_T")


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
        transport = UrllibTransport(timeout_s)
        self.clients = [ControlClient(url, token, transport) for url in urls]
        self.urls = [c.base for c in self.clients]
        self.token = token
        self.timeout_s = timeout_s
        self.token_source = token_source
        self.refresh_every_s = refresh_every_s
        self.clock = clock
        self._refreshed_at: float | None = None

    def _call(self, client: ControlClient, call: Callable[[ControlClient], _T]) -> _T:
        """``call`` on ``client``; after a 401, once more if the token had been rotated."""
        try:
            return call(client)
        except ControlError as exc:
            if exc.status != 401 or not self._refresh_token():
                raise
        return call(client)  # every client has the fresh token now

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
        for client in self.clients:
            client.token = fresh
        return True

    def _node_lists(self) -> list[NodeList]:
        """``GET /nodes`` of every router that answers it (unreachable ones are logged)."""
        lists = []
        for client in self.clients:
            try:
                lists.append(self._call(client, lambda c: c.nodes().nodes))
            except ControlError as exc:
                if not exc.status:
                    log.warning("router %s unreachable: %s", client.base, exc)
        return lists

    def ready_nodes(self) -> int | None:
        """The most ready nodes any router reports; None when no router answers."""
        counts = [nodes.ready_count() for nodes in self._node_lists()]
        return max(counts) if counts else None

    def sightings(self, instance_id: str) -> list[NodeSighting] | None:
        """Every answering router's view of the instance's node(s); None when none answered."""
        lists = self._node_lists()
        if not lists:
            return None
        return [
            NodeSighting(n.last_seen_s_ago, n.in_flight)
            for nodes in lists
            for n in nodes
            if n.instance_id == instance_id
        ]

    def drain_instance(self, instance_id: str) -> DrainResult:
        """``POST /instances/{id}/drain`` on every router; raises if none answered."""
        newly = already = answered = 0
        for client in self.clients:
            try:
                drained = self._call(client, lambda c: c.drain_instance(instance_id))
            except ControlError as exc:
                what = f"answered {exc.status} to" if exc.status else "unreachable for"
                log.warning("router %s %s a drain of %s: %s", client.base, what, instance_id, exc)
                continue
            answered += 1
            if drained is not None:  # None: no node on that instance (404)
                fresh, old = drained.counts()
                newly, already = newly + fresh, already + old
        if not answered:
            raise RouterError(f"no router answered the drain of {instance_id}")
        return DrainResult(newly=newly, already=already)
