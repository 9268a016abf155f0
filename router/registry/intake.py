"""What comes out of Redis, checked like a registration and turned into registry ops.

Redis is inside the trust boundary, but a snapshot entry or a published
message is still checked like ``PUT /nodes/{id}``: the node id, the report
(:func:`~spotrelay.core.protocol.parse_report`) and the URL (the SSRF
policy). One that fails is skipped and logged once per key (again only when
its reason changes), so junk neither takes the link down nor floods logs.
The wire's op names are read here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from spotrelay.core.protocol import ProtocolError, parse_report

from ..transport.netpolicy import NetPolicy, NodeURLError
from .ops import Delete, Drain, Expire, Upsert
from .state import Registry, RegistryFull
from .store import BadEntry, SharedNode, parse_event

log = logging.getLogger("spotrelay.router.registry.state")

SharedOp = Upsert | Drain | Delete | Expire
_BY_NAME: dict[str, type[Drain | Delete | Expire]] = {
    "drain": Drain,
    "delete": Delete,
    "expire": Expire,
}


class Intake:
    def __init__(self, registry: Registry, netpolicy: NetPolicy) -> None:
        self.registry = registry
        self.netpolicy = netpolicy
        self._warned: dict[str, str] = {}  # bad keys already logged, with the reason

    def upsert(self, shared: SharedNode) -> Upsert | None:
        """The shared node as an upsert, or None (logged) when it does not pass."""
        try:
            report = parse_report(shared.report)
            node = self.registry.get(shared.id)
            if node is not None and node.target.url == shared.url:
                target = node.target  # vetted already: no second DNS lookup per heartbeat
            else:
                target = self.netpolicy.validate(shared.url)
        except (ProtocolError, NodeURLError) as exc:
            self.warn(BadEntry(shared.id, str(exc)))
            return None
        self._warned.pop(shared.id, None)
        return Upsert(shared.id, report, target, age_s=shared.age_s, drained=shared.drained)

    def apply_message(self, data: bytes, after_rev: int) -> None:
        """Apply a published change unless it is bad (logged) or at or below ``after_rev``
        (already in the snapshot). Never raises: a bad message must not take the link down."""
        try:
            event = parse_event(data)
        except BadEntry as exc:
            self.warn(exc)
            return
        if event["rev"] <= after_rev:
            return
        try:
            op = self._op(event)
            if op is not None:
                self.registry.apply(op, local=False)
        except RegistryFull as exc:  # this worker's cap; the others may know the node
            log.warning("node %s from the shared registry not taken: %s", event["id"], exc)
        except Exception as exc:  # a bug: logged once per node
            self.warn(BadEntry(event["id"], f"not applied: {describe_error(exc)}"))

    def _op(self, event: dict[str, Any]) -> SharedOp | None:
        node_id = event["id"]
        if event["op"] == "put":
            shared = SharedNode(
                node_id, event["url"], event["report"], event["drained"], event["age_s"]
            )
            return self.upsert(shared)
        return _BY_NAME[event["op"]](node_id)

    def warn(self, bad: BadEntry) -> None:
        """One line per bad key (again only if its reason changes): junk must not flood logs."""
        if self._warned.get(bad.key) == bad.reason:
            return
        if len(self._warned) >= 10_000:
            self._warned.clear()
        self._warned[bad.key] = bad.reason
        log.warning("ignoring node %s from the shared registry: %s", bad.key, bad.reason)


def describe_error(exc: BaseException) -> str:
    """The exception's type and first line, for a log line."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
