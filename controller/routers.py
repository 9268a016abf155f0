"""The controller's view of the routers: ready-node count and drain by instance id.

Plain ``urllib`` (the Lambda runtime has no third-party HTTP client). The
controller asks every URL it is given: with the shared registry that is one
internal endpoint in front of all routers (any answer is the fleet's view);
with routers that each keep their own in-memory registry it is every router.
Either way the ready count is the largest any answer reports (a router that
restarted and knows fewer nodes must not trigger a fallback), and a drain
goes to all.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from .interruptions import DrainResult, RouterUnreachable

log = logging.getLogger("spotrelay.controller")


class RouterError(RouterUnreachable):
    """No router could be reached; the event is retried (SQS redelivers it)."""


class RouterFleet:
    def __init__(self, urls: list[str], token: str, *, timeout_s: float = 5.0) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.token = token
        self.timeout_s = timeout_s

    def _call(self, method: str, url: str) -> tuple[int, Any]:
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

    def ready_nodes(self) -> int | None:
        """The most ready nodes any router reports; None when no router answers."""
        counts = []
        for url in self.urls:
            try:
                status, doc = self._call("GET", url + "/nodes")
            except (OSError, ValueError) as exc:
                log.warning("router %s unreachable: %s", url, exc)
                continue
            if status == 200 and isinstance(doc, list):
                counts.append(sum(1 for n in doc if n.get("state") == "ready"))
        return max(counts) if counts else None

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
