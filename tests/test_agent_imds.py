"""The agent's IMDSv2 client and monitors against the real IMDS emulator process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from spotrelay.agent.eventstore import EventStore
from spotrelay.agent.imds import ImdsClient, ImdsError
from spotrelay.agent.monitors import Poller, all_monitors
from spotrelay.core.interruptions import Event, LifecycleTerminated, Rebalance, SpotInterruption
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup

from .support import Service, start_imds
from .support.agent_node import control, imds_state


@pytest.fixture(scope="module")
def imds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    group = ProcessGroup()
    logdir = tmp_path_factory.mktemp("imds-logs")
    try:
        yield start_imds(
            group, logdir, "--instance-id", "i-0agenttest000001", "--instance-type", "g6e.xlarge",
            "--az", "eu-west-2b", "--local-ipv4", "10.0.1.5",
        )  # fmt: skip
    finally:
        group.stop_all()


@pytest.fixture
def fresh(imds: Service) -> Service:
    control(imds, "reset")
    return imds


def test_identity_and_no_events(fresh: Service) -> None:
    client = ImdsClient(fresh.url)
    ident = client.identity()
    assert ident.instance_id == "i-0agenttest000001"
    assert ident.instance_type == "g6e.xlarge"
    assert ident.availability_zone == "eu-west-2b" and ident.region == "eu-west-2"
    assert ident.lifecycle == "spot" and ident.local_ipv4 == "10.0.1.5"
    assert ident.labels() == {
        "instance_type": "g6e.xlarge",
        "az": "eu-west-2b",
        "lifecycle": "spot",
    }
    assert client.get("/latest/meta-data/spot/instance-action") is None  # 404 = no event
    assert client.token_fetches == 1  # one token for all reads
    assert imds_state(fresh)["counts"]["unauthorized_401"] == 0  # never an IMDSv1 read


def test_revoked_token_is_refetched_once(fresh: Service) -> None:
    client = ImdsClient(fresh.url)
    client.get("/latest/meta-data/instance-id")
    before = imds_state(fresh)["counts"]
    control(fresh, "revoke_tokens")
    assert client.get("/latest/meta-data/instance-id") == "i-0agenttest000001"
    after = imds_state(fresh)["counts"]
    assert after["unauthorized_401"] - before["unauthorized_401"] == 1
    assert after["token_puts"] - before["token_puts"] == 1


def test_token_is_refreshed_before_it_expires(fresh: Service) -> None:
    client = ImdsClient(fresh.url, token_ttl_s=1)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        client.get("/latest/meta-data/instance-id")
        time.sleep(0.1)
    assert client.token_fetches >= 2
    assert imds_state(fresh)["counts"]["unauthorized_401"] == 0


def test_errors_are_typed(fresh: Service) -> None:
    kinds: list[str] = []
    client = ImdsClient(fresh.url, timeout_s=0.3, on_error=kinds.append)
    control(fresh, "outage", {"mode": "error", "status": 503, "duration_s": 30})
    with pytest.raises(ImdsError) as err:
        client.get("/latest/meta-data/instance-id")
    assert err.value.kind == "server"
    control(fresh, "outage", {"mode": "error", "status": 429, "duration_s": 30})
    with pytest.raises(ImdsError) as err:
        client.get("/latest/meta-data/instance-id")
    assert err.value.kind == "throttled"
    control(fresh, "outage", {"mode": "stall", "duration_s": 30})
    with pytest.raises(ImdsError) as err:
        client.get("/latest/meta-data/instance-id")
    assert err.value.kind == "timeout"
    control(fresh, "outage", {"mode": "none"})
    with pytest.raises(ImdsError) as err:
        ImdsClient("http://127.0.0.1:1", timeout_s=0.3).get("/latest/meta-data/instance-id")
    assert err.value.kind == "connect"
    assert kinds == ["server", "throttled", "timeout"]


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, cls: type) -> list[Event]:
        with self.lock:
            return [e for e in self.events if isinstance(e, cls)]


def _pollers(url: str, sink: Sink, stop: threading.Event, interval: float = 0.05) -> list[Poller]:
    """The agent's event path: pollers -> event store -> ``sink`` for each new event."""
    client = ImdsClient(url, timeout_s=0.3)
    store = EventStore("i-0agenttest000001")

    def observe(source: str, events: list[Event]) -> None:
        for event in store.observe(source, events):
            sink(event)

    pollers = [Poller(m, client, interval, observe, stop) for m in all_monitors()]
    for p in pollers:
        p.start()
    return pollers


def test_each_event_reaches_the_sink_once(fresh: Service) -> None:
    sink, stop = Sink(), threading.Event()
    pollers = _pollers(fresh.url, sink, stop)
    try:
        control(fresh, "spot", {"action": "terminate", "lead_s": 60})
        control(fresh, "rebalance")
        control(fresh, "lifecycle", {"state": "Terminated"})
        control(fresh, "scheduled", {"code": "system-reboot", "not_before_s": 600})
        wait_until(lambda: len(sink.events) >= 4, timeout=5, what="four events")
        spot_polls = pollers[0].polls
        wait_until(lambda: pollers[0].polls >= spot_polls + 10, timeout=5, what="more polls")
        assert len(sink.of(SpotInterruption)) == 1  # seen many times, handed over once
        assert len(sink.of(Rebalance)) == 1 and len(sink.of(LifecycleTerminated)) == 1
        (spot,) = sink.of(SpotInterruption)
        assert 55 <= spot.deadline - time.time() <= 61  # type: ignore[operator]
        # A new notice (new time) is a new event.
        control(fresh, "spot", {"action": "terminate", "lead_s": 120})
        wait_until(lambda: len(sink.of(SpotInterruption)) == 2, timeout=5, what="second notice")
    finally:
        stop.set()


def test_outage_and_revoked_tokens_do_not_stop_the_pollers(fresh: Service) -> None:
    sink, stop = Sink(), threading.Event()
    pollers = _pollers(fresh.url, sink, stop, interval=0.05)
    try:
        control(fresh, "outage", {"mode": "error", "status": 500, "duration_s": 1.0})
        wait_until(
            lambda: all(p.backoff.failures > 0 for p in pollers),
            timeout=5,
            what="every poller to see the outage",
        )
        assert all(p.is_alive() for p in pollers)
        control(fresh, "revoke_tokens")
        control(fresh, "spot", {"action": "terminate", "lead_s": 60})
        wait_until(lambda: sink.of(SpotInterruption), timeout=6, what="notice after outage")
        assert all(p.is_alive() for p in pollers)
    finally:
        stop.set()
