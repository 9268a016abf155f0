"""Agent building blocks driven directly: events, backoff, metrics parsing, state file,
process watch and the drain state machine with in-process fakes for the outside world."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from spotrelay.agent.drain import DrainMachine, DrainPolicy
from spotrelay.agent.drainer import Drainer
from spotrelay.agent.drainstate import DrainState
from spotrelay.agent.drainstore import StateStore
from spotrelay.agent.engine import ProcessWatch, parse_metrics
from spotrelay.agent.eventstore import EventStore
from spotrelay.agent.lifecycle import LifecycleError
from spotrelay.agent.metrics import AgentMetrics
from spotrelay.agent.monitors import MAINTENANCE
from spotrelay.agent.routers import RouterError
from spotrelay.agent.webhook import Webhook
from spotrelay.core.backoff import Backoff
from spotrelay.core.imds_events import (
    parse_instance_action,
    parse_rebalance,
    parse_scheduled,
    parse_target_lifecycle_state,
)
from spotrelay.core.interruptions import (
    EventParseError,
    LifecycleTerminated,
    MaintenanceCanceled,
    Rebalance,
    ScheduledMaintenance,
    SpotInterruption,
    parse_time,
)
from spotrelay.core.protocol import NodeLoad, NodeReport, NodeState
from spotrelay.sim.loopback import wait_until

# ------------------------------------------------------------------ events


def test_parse_times_in_both_imds_formats() -> None:
    assert parse_time("2019-01-21T09:00:43Z") == parse_time("21 Jan 2019 09:00:43 GMT")
    assert parse_time("1 Feb 2026 00:00:00 GMT") == 1769904000.0
    with pytest.raises(EventParseError):
        parse_time("tomorrow")


def test_spot_notice_parsing_and_stable_key() -> None:
    body = '{"action": "terminate", "time": "2026-05-01T12:02:00Z"}'
    a, b = parse_instance_action(body), parse_instance_action(body)
    assert isinstance(a, SpotInterruption)
    assert a.key == b.key == "spot:terminate:2026-05-01T12:02:00Z"
    assert a.deadline == parse_time("2026-05-01T12:02:00Z")
    assert a.terminating
    assert parse_instance_action(None) is None
    other = parse_instance_action('{"action": "terminate", "time": "2026-05-01T12:05:00Z"}')
    assert other is not None and other.key != a.key
    with pytest.raises(EventParseError):
        parse_instance_action("<html>")


def test_rebalance_and_lifecycle_parsing() -> None:
    r = parse_rebalance('{"noticeTime": "2026-05-01T12:00:00Z"}')
    assert isinstance(r, Rebalance) and r.deadline is None and not r.terminating
    assert parse_rebalance(None) is None
    assert isinstance(parse_target_lifecycle_state("Terminated"), LifecycleTerminated)
    for state in ("InService", "Warmed:Terminated", "Standby", None):
        assert parse_target_lifecycle_state(state) is None


def test_scheduled_events_skip_canceled_and_completed() -> None:
    doc = [
        {
            "NotBefore": "21 Jan 2030 09:00:43 GMT",
            "Code": "system-reboot",
            "Description": "scheduled reboot",
            "EventId": "instance-event-1",
            "NotAfter": "21 Jan 2030 09:17:23 GMT",
            "State": "active",
        },
        {"NotBefore": "22 Jan 2030 09:00:00 GMT", "Code": "instance-stop", "State": "canceled"},
        {
            "NotBefore": "20 Jan 2019 09:00:00 GMT",
            "Code": "system-reboot",
            "Description": "[Completed] scheduled reboot",
        },
    ]
    events = parse_scheduled(json.dumps(doc))
    assert len(events) == 1
    (ev,) = events
    assert isinstance(ev, ScheduledMaintenance)
    assert ev.deadline == parse_time("21 Jan 2030 09:00:43 GMT")
    assert ev.key == "maintenance:instance-event-1:2030-01-21T09:00:43Z"
    assert parse_scheduled("[]") == [] and parse_scheduled(None) == []
    # A single object where a list is documented is tolerated.
    assert len(parse_scheduled(json.dumps(doc[0]))) == 1


def test_maintenance_monitor_reports_cancellation() -> None:
    mon, store = MAINTENANCE, EventStore("i-1")
    body = json.dumps([{"NotBefore": "21 Jan 2030 09:00:43 GMT", "Code": "system-reboot"}])
    (ev,) = mon.observe(body)
    assert store.observe(mon.name, mon.observe(body)) == [ev]
    assert store.observe(mon.name, mon.observe(body)) == []  # still listed: nothing new
    gone = store.observe(mon.name, mon.observe("[]"))
    assert gone == [MaintenanceCanceled(original_key=ev.key)]
    assert store.observe(mon.name, mon.observe(None)) == []


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(1.0, 8.0)
    delays = [b.next_delay() for _ in range(8)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert all(4.0 <= d <= 8.0 for d in delays[3:])
    b.reset()
    assert b.next_delay() <= 1.0


# ----------------------------------------------------------------- engine

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="0",model_name="lora-a"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.41
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 1234.0
"""


def test_parse_vllm_metrics() -> None:
    assert parse_metrics(VLLM_METRICS) == NodeLoad(running=4, waiting=2, kv_cache_usage=0.41)
    old = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
    assert parse_metrics(old) == NodeLoad(0, 0, 0.5)
    assert parse_metrics("") == NodeLoad()


def test_process_watch_finds_the_engine_and_notices_it_is_gone(tmp_path: Path) -> None:
    script = tmp_path / "fakeengine.py"
    script.write_text("import time\ntime.sleep(60)\n")
    watch = ProcessWatch("fakeengine", port=1, rescan_s=0.05)
    assert watch.alive() is None  # never seen: no opinion
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        wait_until(lambda: watch.alive() is True, timeout=5, what="process found")
        assert watch.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()
    assert watch.alive() is False
    assert ProcessWatch(None, 1).alive() is None


# ------------------------------------------------------------ state file


def _state(**kw: object) -> DrainState:
    base = dict(
        instance_id="i-1",
        node_id="n1",
        kind="spot_interruption",
        reasons=["spot:x"],
        started_at=1.0,
        drain_until=2.0,
        deadline=3.0,
    )
    base.update(kw)
    return DrainState(**base)  # type: ignore[arg-type]


def test_state_store_round_trip_and_corruption(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "drain.json")
    assert store.load() is None
    st = _state(announced=True)
    store.save(st)
    assert store.load() == st
    assert not list(tmp_path.glob(".drain-*"))  # no temp file left behind
    store.save(_state(persist=False, reasons=["sigterm"]))  # not persisted
    assert store.load() == st
    (tmp_path / "drain.json").write_text("{not json")
    assert store.load() is None
    assert (tmp_path / "drain.corrupt").exists()
    assert StateStore(None).load() is None


# ------------------------------------------------------- drain machine fakes


class FakeRouter:
    def __init__(self, base: str, fail_times: int = 0, in_flight: list[int] | None = None):
        self.base = base
        self.calls: list[tuple[str, float]] = []
        self.fail_times = fail_times
        self.in_flight = in_flight or []

    def _maybe_fail(self, what: str) -> None:
        self.calls.append((what, time.monotonic()))
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RouterError(f"{what} failed")

    def put(self, report: NodeReport) -> None:
        self._maybe_fail(f"put:{report.state}")

    def drain(self) -> int:
        self._maybe_fail("drain")
        return self.in_flight.pop(0) if self.in_flight else 0

    def delete(self) -> None:
        self._maybe_fail("delete")

    def names(self) -> list[str]:
        return [c for c, _ in self.calls]


class ScriptedLoad:
    """The node load an engine reports, scripted: each call gives the next (the last repeats)."""

    def __init__(self, loads: list[NodeLoad | None] | None = None):
        self.loads = list(loads or [])
        self.last: NodeLoad | None = NodeLoad()

    def load(self) -> NodeLoad | None:
        if self.loads:
            self.last = self.loads.pop(0)
        return self.last


class FakeLifecycle:
    def __init__(self, errors: int = 0, result: str = "completed"):
        self.errors = errors
        self.result = result
        self.completed: list[float] = []
        self.heartbeats = 0

    def complete(self) -> str:
        if self.errors:
            self.errors -= 1
            raise LifecycleError("throttled")
        self.completed.append(time.time())
        return self.result

    def heartbeat(self) -> bool:
        self.heartbeats += 1
        return True


def _machine(
    tmp_path: Path,
    *,
    routers: list[FakeRouter] | None = None,
    engine: ScriptedLoad | None = None,
    lifecycle: FakeLifecycle | None = None,
    boot_id: str | None = "boot-1",
    **policy: object,
) -> Drainer:
    base_policy = dict(
        safety_margin_s=1.0, timeout_s=30.0, sigterm_timeout_s=2.0, ack_timeout_s=2.0,
        idle_poll_s=0.02, lifecycle_heartbeat_s=0.05,
    )  # fmt: skip
    base_policy.update(policy)
    report = NodeReport(url="http://127.0.0.1:1", models=("m",))
    machine = DrainMachine(
        node_id="n1",
        instance_id="i-1",
        policy=DrainPolicy(**base_policy),  # type: ignore[arg-type]
        has_hook=lifecycle is not None,
        boot_id=boot_id,
    )
    return Drainer(
        machine,
        routers=routers if routers is not None else [FakeRouter("r1")],
        engine=engine or ScriptedLoad(),
        store=StateStore(tmp_path / "drain.json"),
        report_fn=lambda state: NodeReport(report.url, report.models, state),
        lifecycle=lifecycle,
        metrics=AgentMetrics(),
    )


def _spot(lead_s: float = 10.0) -> SpotInterruption:
    return SpotInterruption(action="terminate", time=float(int(time.time() + lead_s)))


def test_drain_runs_every_step_in_order_once(tmp_path: Path) -> None:
    router = FakeRouter("r1", in_flight=[2, 1, 0, 0, 0])
    busy = NodeLoad(running=1)
    engine = ScriptedLoad([busy, busy, NodeLoad(), NodeLoad(), NodeLoad(), NodeLoad()])
    lc = FakeLifecycle()
    m = _machine(tmp_path, routers=[router], engine=engine, lifecycle=lc)
    ev = _spot()
    assert m.request_event(ev) is True
    for _ in range(5):  # the same notice seen again and again
        assert m.request_event(ev) is False
    assert m.request_event(LifecycleTerminated()) is False  # another signal: merged
    assert m.wait(10)
    st = StateStore(tmp_path / "drain.json").load()
    assert st is not None and st.finished_at is not None
    assert st.reasons == [ev.key, LifecycleTerminated().key]
    assert st.announced and st.idle and st.deregistered and st.lifecycle_done
    assert st.lifecycle_result == "completed"
    names = router.names()
    assert names[0] == "put:draining" and names[1] == "drain"
    assert names[-1] == "delete" and names.count("delete") == 1
    assert len(lc.completed) == 1 and lc.completed[0] < ev.time
    assert m.silenced
    assert m.metrics.drains.labels("spot_interruption")._value.get() == 1
    assert m.metrics.drain_deadline_missed._value.get() == 0


def test_drain_without_engine_metrics_waits_for_the_routers_in_flight(tmp_path: Path) -> None:
    router = FakeRouter("r1", in_flight=[3, 2, 1, 0, 0, 0])  # first value: the announce
    m = _machine(tmp_path, routers=[router], engine=ScriptedLoad([None]))  # no /metrics
    t0 = time.time()
    m.request("x", "spot_interruption", drain_until=t0 + 20, deadline=t0 + 21, terminating=True)
    assert m.wait(10)
    assert time.time() - t0 < 5  # idle once the router had nothing in flight, not the deadline
    assert router.names().count("drain") >= 5  # it kept asking the router until 0, 0


def test_drain_waits_for_in_flight_then_stops_at_the_deadline(tmp_path: Path) -> None:
    engine = ScriptedLoad([NodeLoad(running=1)])  # never idle
    lc = FakeLifecycle()
    m = _machine(tmp_path, engine=engine, lifecycle=lc, safety_margin_s=1.0)
    t0 = time.time()
    m.request("x", "spot_interruption", drain_until=t0 + 0.6, deadline=t0 + 1.6, terminating=True)
    assert m.wait(10)
    elapsed = time.time() - t0
    assert 0.5 <= elapsed < 1.5
    assert lc.heartbeats >= 2  # RecordLifecycleActionHeartbeat while waiting
    assert lc.completed and lc.completed[0] < t0 + 1.6
    # the cut-off work is counted: SpotrelayDrainMissedDeadline fires on it
    assert m.metrics.drain_deadline_missed._value.get() == 1


def test_earlier_deadline_tightens_the_running_drain(tmp_path: Path) -> None:
    m = _machine(tmp_path, engine=ScriptedLoad([NodeLoad(running=1)]))
    t0 = time.time()
    m.request("rebalance:x", "rebalance", drain_until=t0 + 30, deadline=t0 + 31, terminating=False)
    time.sleep(0.1)
    assert m.running
    m.request("spot:y", "spot", drain_until=t0 + 0.3, deadline=t0 + 1.3, terminating=True)
    assert m.wait(5)
    assert time.time() - t0 < 2
    assert m.state is not None and m.state.terminating


def test_terminating_signal_after_a_finished_drain_only_completes_the_hook(
    tmp_path: Path,
) -> None:
    router = FakeRouter("r1")
    lc = FakeLifecycle()
    m = _machine(tmp_path, routers=[router], lifecycle=lc)
    m.request_event(Rebalance(notice_time=time.time()))
    assert m.wait(5) and m.finished and not lc.completed
    calls = len(router.calls)
    m.request_event(LifecycleTerminated())
    assert m.wait(5)
    assert len(lc.completed) == 1
    assert len(router.calls) == calls  # no second announce or delete


def test_lifecycle_errors_are_retried_and_router_failures_tolerated(tmp_path: Path) -> None:
    flaky = FakeRouter("r1", fail_times=2)
    dead = FakeRouter("r2", fail_times=10_000)
    lc = FakeLifecycle(errors=1)
    m = _machine(tmp_path, routers=[flaky, dead], lifecycle=lc, ack_timeout_s=0.5)
    t0 = time.time()
    m.request("s", "spot", drain_until=t0 + 5, deadline=t0 + 6, terminating=True)
    assert m.wait(15)
    assert lc.completed and m.state is not None and m.state.lifecycle_result == "completed"
    assert "delete" in flaky.names()
    assert m.state.deregistered


def test_restart_mid_drain_resumes_without_repeating_done_steps(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "drain.json")
    now = time.time()
    store.save(
        _state(
            instance_id="i-1",
            reasons=["spot:terminate:x"],
            started_at=now - 5,
            drain_until=now + 5,
            deadline=now + 6,
            terminating=True,
            announced=True,
            boot_id="boot-1",
        )
    )
    router = FakeRouter("r1")
    lc = FakeLifecycle()
    m = _machine(tmp_path, routers=[router], lifecycle=lc)
    assert m.restore() is not None
    assert m.active and not m.silenced
    assert m.wait(5)
    assert router.names() == ["delete"]  # no second announce, no re-registration
    assert lc.completed
    # A second restart finds the drain finished: nothing more happens.
    m2 = _machine(tmp_path, routers=[FakeRouter("r1")], lifecycle=FakeLifecycle())
    assert m2.restore() is not None and m2.silenced and not m2.running


def test_state_of_another_boot_or_instance_is_ignored(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "drain.json")
    store.save(_state(boot_id="boot-0", finished_at=1.0))
    assert _machine(tmp_path, boot_id="boot-1").restore() is None
    assert store.load() is None  # cleared
    store.save(_state(instance_id="i-other", boot_id="boot-1"))
    assert _machine(tmp_path).restore() is None


def test_sigterm_drain_is_short_and_not_persisted(tmp_path: Path) -> None:
    router = FakeRouter("r1")
    m = _machine(tmp_path, routers=[router], engine=ScriptedLoad([NodeLoad(running=1)]))
    t0 = time.time()
    m.policy.sigterm_timeout_s = 0.5
    assert m.request_shutdown()
    assert m.wait(5)
    assert 0.4 <= time.time() - t0 < 3
    assert router.names()[-1] == "delete"
    assert not (tmp_path / "drain.json").exists()


def test_dry_run_drain_touches_nothing(tmp_path: Path) -> None:
    router = FakeRouter("r1")
    m = _machine(tmp_path, routers=[router], engine=ScriptedLoad([NodeLoad(running=5)]))
    m.dry_run = True
    m.store = StateStore(None)
    m.request_event(_spot(60))
    assert m.wait(5) and m.finished  # no waiting for idle in a dry run


# ---------------------------------------------------------------- webhook


def test_webhook_posts_json_summaries() -> None:
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = Webhook(f"http://127.0.0.1:{server.server_port}/hook", base={"node_id": "n1"})
        hook.send("drain_started", reason="spot")
        hook.flush(5)
        wait_until(lambda: got, timeout=5, what="webhook POST")
        assert got[0]["kind"] == "drain_started" and got[0]["node_id"] == "n1"
        assert got[0]["reason"] == "spot"
        failures: list[int] = []
        dead = Webhook("http://127.0.0.1:1/", on_failure=lambda: failures.append(1), tries=1)
        dead.send("x")
        dead.flush(5)
        assert failures == [1]
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_documents_arrive_in_the_order_sent() -> None:
    """A receiver slow to answer the first POST still gets the documents in order:
    ``event`` before ``drain_started`` before ``drain_finished`` (they were once
    posted side by side, and a loaded CI machine delivered them swapped)."""
    done: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            kind = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["kind"]
            if kind == "event":
                time.sleep(0.3)  # the fault: a receiver slow on the first document
            self.send_response(204)
            self.end_headers()
            done.append(kind)  # recorded once answered: a racing POST would finish first

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = Webhook(f"http://127.0.0.1:{server.server_port}/hook")
        for kind in ("event", "drain_started", "drain_finished"):
            hook.send(kind)
        hook.flush(5)
        wait_until(lambda: len(done) == 3, timeout=5, what="three webhook POSTs")
        assert done == ["event", "drain_started", "drain_finished"]
    finally:
        server.shutdown()
        server.server_close()


def test_node_state_values_match_the_protocol() -> None:
    assert {s.value for s in NodeState} == {"ready", "draining", "unhealthy"}


# ------------------------------------------------------- docs and packaging

ROOT = Path(__file__).resolve().parent.parent


def test_every_config_key_is_documented_and_in_the_example() -> None:
    import dataclasses

    import yaml

    from spotrelay.agent.settings import AgentConfig
    from spotrelay.core.config import env_name, load

    doc = (ROOT / "docs" / "agent.md").read_text()
    example = yaml.safe_load((ROOT / "agent" / "examples" / "agent.yaml").read_text())
    load(AgentConfig, ROOT / "agent" / "examples" / "agent.yaml", env={})  # valid
    defaults = AgentConfig()
    for f in dataclasses.fields(AgentConfig):
        section = getattr(defaults, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        for sf in dataclasses.fields(section):
            assert f"`{f.name}.{sf.name}`" in doc, f"{f.name}.{sf.name} undocumented"
            assert env_name(f.name, sf.name) in doc
            assert sf.name in example[f.name], f"{f.name}.{sf.name} not in the example"
    assert "`state_dir`" in doc and "state_dir" in example


def test_systemd_unit() -> None:
    import configparser
    import shutil
    import tempfile

    path = ROOT / "agent" / "systemd" / "spotrelay-agent.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(path)
    svc = unit["Service"]
    assert svc["Restart"] == "always"
    assert set(unit["Unit"]["After"].split()) >= {"network-online.target", "vllm.service"}
    assert unit["Unit"]["Wants"] == "network-online.target"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert svc[key] == "yes"
    assert svc["ProtectSystem"] == "strict" and svc["StateDirectory"] == "spotrelay"
    assert int(svc["TimeoutStopSec"]) > 20 + 30  # drain.sigterm_timeout_s + router calls
    assert "agent --config /etc/spotrelay/agent.yaml" in svc["ExecStart"]
    rule = (ROOT / "agent" / "systemd" / "50-spotrelay-agent.rules").read_text()
    assert '"vllm.service"' in rule and '"stop"' in rule and '"spotrelay"' in rule
    analyze = shutil.which("systemd-analyze")
    if analyze:  # full syntax check where systemd is installed
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "spotrelay-agent.service"
            target.write_text(
                path.read_text().replace("/opt/spotrelay/venv/bin/spotrelay", "/bin/true")
            )
            out = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
