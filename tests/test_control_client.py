"""The control-plane client against a real router (gunicorn on loopback), on both transports.

Every component calls the routers through ``core/control_client.py``; what it
parses is what ``core/control_api.py`` says the router answers. These tests
hold the two together on the wire: each call's typed answer, the errors a
caller tells apart (refused token, unknown node, nothing listening), and the
rules of the transports (one attempt, no redirect followed with the token).
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Callable, Iterator

import pytest

from spotrelay.agent.routers import Urllib3Transport
from spotrelay.core.control_api import NodeEntry, NodeList, ShapeError
from spotrelay.core.control_client import ControlClient, ControlError, Transport, UrllibTransport
from spotrelay.core.protocol import EngineInfo, NodeLoad, NodeReport, NodeState, Risk
from spotrelay.sim.loopback import free_port

from .support import ROUTER_TOKEN, Service, router_nodes
from .support.raw_server import RawServer

ENGINE = "http://127.0.0.1:8000"
TRANSPORTS: dict[str, Callable[[], Transport]] = {
    "urllib": lambda: UrllibTransport(5),
    "urllib3": lambda: Urllib3Transport(5),
}


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> Transport:
    return TRANSPORTS[request.param]()


@pytest.fixture
def client(router: Service, transport: Transport) -> ControlClient:
    return ControlClient(router.control_url, ROUTER_TOKEN, transport)


def report(model: str, **fields: object) -> NodeReport:
    return NodeReport(url=ENGINE, models=(model,), **fields)


def test_a_node_from_registration_to_deletion(
    client: ControlClient, router: Service, transport: Transport
) -> None:
    node = f"cc-life-{id(transport)}"
    full = report(
        "cc-life",
        load=NodeLoad(running=2, waiting=1, kv_cache_usage=0.25),
        labels={"az": "us-east-1a"},
        engine=EngineInfo("vllm", "0.9.1", frozenset({"echo"})),
        instance_id="i-0123456789abcdef0",
        risk=Risk.ELEVATED,
    )
    first = client.put_node(node, full)
    assert (first.id, first.url, first.state, first.registered) == (node, ENGINE, "ready", True)
    assert first.ttl_s == 60 and first.in_flight == 0
    assert client.put_node(node, full).registered is False  # a heartbeat

    view = client.nodes()
    assert view.registry == "memory" and " pid " in (view.answered_by or "")
    [entry] = [n for n in view.nodes if n.id == node]
    assert entry.ready and entry.models == ("cc-life",) and entry.load == full.load
    assert entry.labels == {"az": "us-east-1a"} and entry.engine == full.engine
    assert (entry.instance_id, entry.risk, entry.reported_state) == (
        "i-0123456789abcdef0",
        "elevated",
        "ready",
    )

    drained = client.drain_node(node)
    assert drained is not None and (drained.id, drained.in_flight) == (node, 0)
    [entry] = [n for n in client.nodes().nodes if n.id == node]
    assert entry.state == "draining" and entry.admin_drained

    deleted = client.delete_node(node)
    assert deleted is not None and deleted.id == node
    assert node not in {n.id for n in client.nodes().nodes}
    # What the router does not know is None, not an error: an agent's late calls.
    assert client.delete_node(node) is None
    assert client.drain_node(node) is None


def test_an_instance_drain_counts_what_was_draining_already(client: ControlClient) -> None:
    instance = f"i-0{secrets.token_hex(8)}"
    client.put_node("cc-inst-a", report("cc-inst", instance_id=instance))
    client.put_node("cc-inst-b", report("cc-inst", instance_id=instance, state=NodeState.DRAINING))
    try:
        drained = client.drain_instance(instance)
        assert drained is not None and drained.instance_id == instance
        assert {n.id: n.already_draining for n in drained.nodes} == {
            "cc-inst-a": False,
            "cc-inst-b": True,
        }
        assert drained.counts() == (1, 1)
        assert client.drain_instance("i-0fffffffffffffff0") is None  # no node on it
        with pytest.raises(ControlError) as bad:
            client.drain_instance("not-an-instance")
        assert bad.value.status == 400 and "is not an EC2 instance id" in str(bad.value)
    finally:
        client.delete_node("cc-inst-a")
        client.delete_node("cc-inst-b")


def test_the_list_is_what_the_router_wrote(client: ControlClient, router: Service) -> None:
    """Parsing ``GET /nodes`` and writing it back loses nothing (read raw, not by the client)."""
    client.put_node("cc-wire", report("cc-wire", labels={"k": "v"}))
    try:
        raw = list(router_nodes(router.control_url).values())
        assert NodeList.from_json(raw).to_json() == raw
    finally:
        client.delete_node("cc-wire")


def test_ops_endpoints(client: ControlClient) -> None:
    assert client.healthz() == 200
    client.put_node("cc-ops", report("cc-ops"))
    try:
        ready = client.readyz()
        assert ready.ready and ready.status == 200 and ready.nodes["ready"] >= 1
        assert set(ready.nodes) == {"ready", "draining", "ejected", "unhealthy"}
        assert "spotrelay_router_nodes" in client.metrics()
    finally:
        client.delete_node("cc-ops")


def test_a_refused_token_is_told_apart_and_never_printed(
    router: Service, transport: Transport
) -> None:
    wrong = ControlClient(router.control_url, "wrong-token-123", transport)
    with pytest.raises(ControlError) as refused:
        wrong.nodes()
    assert refused.value.status == 401 and "refused the node token" in str(refused.value)
    assert "wrong-token-123" not in str(refused.value)
    wrong.token = ROUTER_TOKEN  # a re-read token is used from the next call on
    assert isinstance(wrong.nodes().nodes, NodeList)


def test_nothing_listening_is_status_zero(transport: Transport) -> None:
    dead = ControlClient(f"http://127.0.0.1:{free_port()}", ROUTER_TOKEN, transport)
    with pytest.raises(ControlError) as unreachable:
        dead.put_node("n", report("m"))
    assert unreachable.value.status == 0
    assert dead.healthz() == 0


@pytest.fixture
def raw_servers() -> Iterator[Callable[..., RawServer]]:
    """Servers that answer every request with one scripted answer: what no router sends."""
    made: list[RawServer] = []

    def make(status: str, headers: dict[str, str] | None = None, body: bytes = b"") -> RawServer:
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        answer = (
            f"HTTP/1.1 {status}\r\n{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body

        def handler(conn: socket.socket, _index: int) -> None:
            if server.read_request(conn) is not None:
                conn.sendall(answer)

        server = RawServer(handler)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def test_a_redirect_is_not_followed_with_the_token(raw_servers, transport: Transport) -> None:
    elsewhere = raw_servers("200 OK", {"Content-Type": "application/json"}, b"[]")
    target = f"http://127.0.0.1:{elsewhere.port}/nodes"
    redirecting = raw_servers("307 Temporary Redirect", {"Location": target})
    client = ControlClient(f"http://127.0.0.1:{redirecting.port}", ROUTER_TOKEN, transport)
    with pytest.raises(ControlError) as moved:
        client.nodes()
    assert moved.value.status == 307
    assert len(redirecting.requests) == 1 and elsewhere.requests == []
    assert f"Bearer {ROUTER_TOKEN}".encode() in redirecting.requests[0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"nodes": []}', "must answer a JSON list"),  # the envelope two clients once guessed
        (b"<html>proxy error page</html>", "must answer a JSON list"),
        (b'[{"id": "a"}]', "'state' must be a string (required)"),
    ],
)
def test_an_answer_of_another_shape_is_an_error(
    raw_servers, transport: Transport, body: bytes, reason: str
) -> None:
    server = raw_servers("200 OK", {"Content-Type": "application/json"}, body)
    client = ControlClient(f"http://127.0.0.1:{server.port}", ROUTER_TOKEN, transport)
    with pytest.raises(ControlError, match="not a control-plane answer") as wrong:
        client.nodes()
    assert wrong.value.status == 200 and reason in str(wrong.value)


def test_an_error_answer_carries_the_routers_reason(raw_servers, transport: Transport) -> None:
    doc = {"error": "registry full: 2 nodes registered (registry.max_nodes)"}
    server = raw_servers("429 Too Many Requests", {}, json.dumps(doc).encode())
    client = ControlClient(f"http://127.0.0.1:{server.port}", ROUTER_TOKEN, transport)
    with pytest.raises(ControlError) as full:
        client.put_node("n", report("m"))
    assert full.value.status == 429 and "registry full" in str(full.value)


def test_entries_of_an_older_router_take_defaults() -> None:
    """A router of another version may leave fields out; a wrong type is still an error."""
    entry = NodeEntry.from_json({"id": "a", "state": "ready", "url": ENGINE, "models": ["m"]})
    assert entry.engine == EngineInfo() and entry.instance_id is None and entry.in_flight == 0
    with pytest.raises(ShapeError, match="'in_flight' must be an integer"):
        NodeEntry.from_json({"id": "a", "state": "ready", "in_flight": "3"})
