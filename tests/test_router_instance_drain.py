"""The registry's drain by EC2 instance id (the capacity controller's off-node path)."""

from __future__ import annotations

from spotrelay.core.protocol import parse_report
from spotrelay.router.registry.node import Node
from spotrelay.router.registry.ops import DrainInstance, Upsert
from spotrelay.router.registry.state import Registry
from spotrelay.router.transport.netpolicy import NetPolicy

NETS = NetPolicy(["10.0.0.0/8"])


def put(reg: Registry, node_id: str, n: int, instance_id: str, state: str = "ready") -> None:
    url = f"http://10.0.0.{n}:8000"
    body = {"url": url, "models": ["m"], "state": state, "instance_id": instance_id}
    reg.apply(Upsert(node_id, parse_report(body), NETS.validate(url)))


def drain(reg: Registry, instance_id: str) -> list[tuple[Node, bool]]:
    return reg.apply(DrainInstance(instance_id)).matched


def test_drains_the_instance_once_and_reports_earlier_drains() -> None:
    reg = Registry(15.0)
    events: list[tuple[str, str]] = []
    reg.listeners.append(lambda event, node: events.append((event, node.id)))
    put(reg, "a", 1, "i-0aaaaaaaaaaaaaaaa")
    put(reg, "b", 2, "i-0bbbbbbbbbbbbbbbb", state="draining")  # its agent drains it already
    put(reg, "c", 3, "i-0cccccccccccccccc")

    first = drain(reg, "i-0aaaaaaaaaaaaaaaa")
    assert [(n.id, already) for n, already in first] == [("a", False)]
    again = drain(reg, "i-0aaaaaaaaaaaaaaaa")
    assert [(n.id, already) for n, already in again] == [("a", True)]
    by_agent = drain(reg, "i-0bbbbbbbbbbbbbbbb")
    assert [(n.id, already) for n, already in by_agent] == [("b", True)]
    assert drain(reg, "i-0dddddddddddddddd") == []

    assert [e for e in events if e[0] == "drained"] == [("drained", "a")]  # one event, one node
    assert [n.id for n in reg.candidates("m")] == ["c"]
    put(reg, "a", 1, "i-0aaaaaaaaaaaaaaaa")  # a heartbeat saying ready does not undo it
    assert [n.id for n in reg.candidates("m")] == ["c"]
