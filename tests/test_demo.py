"""``spotrelay demo`` end to end: a short run is our smoke test of the whole system.

The demo runs as a real subprocess with its working directory in a temp
folder; every process it starts inherits that directory, which is how the
tests prove nothing is left behind (also after Ctrl-C).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest

from spotrelay.sim.chaos import FleetObserver
from spotrelay.sim.demo_prometheus import INTERVAL_S
from spotrelay.sim.demo_routers import SERVED_AFTER_BACK
from spotrelay.sim.loopback import wait_until

from .support.demo import demo_output, leftovers, start_demo


@pytest.mark.timeout(240)
def test_short_demo_has_no_client_visible_failure(tmp_path: Path) -> None:
    proc = start_demo(
        tmp_path,
        "--nodes",
        "3",
        "--duration",
        "20",
        "--preemptions",
        "1",
        "--hard-kills",
        "1",
        "--lead-s",
        "5",
        "--rps",
        "10",
        "--seed",
        "3",
    )
    out = demo_output(proc)

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["requests"] > 100
    assert report["failed"] == 0 and report["streams"]["broken"] == 0
    assert report["succeeded"] == report["requests"]
    assert report["verified_text"] == report["requests"]
    # The simulator answers /version like vLLM: its agents advertise chat resume.
    assert report["settings"]["streaming_chat"] is True
    assert report["by_kind"]["responses"] > 5, "Responses API calls are part of the traffic"
    # The default mix has the quiet faults too: a frozen engine and a frozen host.
    assert sorted(e["type"] for e in report["events"]) == [
        "freeze", "hard_kill", "host_freeze", "spot_notice",
    ]  # fmt: skip
    assert report["settings"]["freeze_s"] == 9.0
    for event in report["events"]:
        assert event["excluded"] is not None, f"the router kept routing to it: {event}"
        if event["type"] == "freeze":  # continued after freeze_s: the node serves again
            assert event["thawed"] is not None and event["killed"] is None
            assert event["excluded"] < event["thawed"] < event["back"], event
            continue
        assert event["killed"] is not None
        assert event["replacement_ready"] is not None, f"no replacement joined: {event}"
    host = next(e for e in report["events"] if e["type"] == "host_freeze")
    assert host["excluded"] < host["killed"], "a frozen host must be left before it is gone"
    notice = next(e for e in report["events"] if e["type"] == "spot_notice")
    assert notice["excluded"] < notice["killed"], "the router kept the node until reclaim"
    assert notice["drained"] is not None and notice["drained"] <= notice["killed"]

    # The terminal summary is rendered from the same numbers.
    for label, key in [
        ("requests sent", "requests"),
        ("succeeded", "succeeded"),
        ("client-visible failures", "failed"),
        ("streams resumed", "resumed"),
        ("retried by the router", "retried"),
    ]:
        match = re.search(rf"^{label}\s+(\d+)$", out, re.MULTILINE)
        assert match and int(match.group(1)) == report[key], label
    assert str(report["latency_ms"]["p99"]) in out

    png = (tmp_path / "out" / "timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert leftovers(tmp_path) == []


@pytest.mark.timeout(120)
@pytest.mark.skipif(not shutil.which("prometheus"), reason="prometheus not installed (Debian)")
def test_prometheus_sees_the_host_freeze_and_nothing_for_the_preemption(tmp_path: Path) -> None:
    proc = start_demo(
        tmp_path, "--prometheus", "--nodes", "2", "--duration", "14", "--rps", "8",
        "--preemptions", "1", "--hard-kills", "0", "--freezes", "0", "--host-freezes", "1",
        "--lead-s", "4", "--freeze-s", "3", "--seed", "5",
    )  # fmt: skip
    out = demo_output(proc, timeout=100)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    notice = next(e for e in report["events"] if e["type"] == "spot_notice")
    host = next(e for e in report["events"] if e["type"] == "host_freeze")
    # The preemption (drained, deregistered) fires nothing; the frozen host's
    # heartbeats stop and its expiry at the router fires the stopped-heartbeat alert.
    assert [a["alert"] for a in report["alerts"]] == ["SpotrelayNodeHeartbeatsStopped"], out
    fired = report["alerts"][0]["first_firing"]
    # Timed from the expiry (the router can leave a frozen host earlier, when its streams
    # stall: `excluded`). The first scrape after it comes within an interval and takes at
    # most its timeout, the next evaluation fires, the alerts query rounds up to its step.
    # Earlier than the demo saw the expiry by at most one scrape timeout (a scrape's
    # samples carry its start time) plus one poll of the demo's observer.
    assert host["at"] < host["excluded"] <= host["expired"], host
    late = 2 * INTERVAL_S + INTERVAL_S + INTERVAL_S  # scrape + timeout, evaluation, step
    early = INTERVAL_S + FleetObserver.interval_s
    assert host["expired"] - early <= fired <= host["expired"] + late, (host, fired)
    assert notice["killed"] is not None and notice["drained"] is not None
    assert "SpotrelayNodeHeartbeatsStopped" in out
    rules = (tmp_path / "out" / "prometheus" / "rules.yml").read_text()
    assert "for: 15s" in rules and "for: 15m" not in rules  # a minute became a second
    assert leftovers(tmp_path) == []


@pytest.mark.timeout(120)
def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    proc = start_demo(
        tmp_path, "--nodes", "2", "--duration", "60", "--preemptions", "0", "--hard-kills", "0"
    )
    try:
        # Interrupt like a user would, once the whole fleet has been started.
        wait_until(
            lambda: (tmp_path / "out" / "logs" / "node-2-agent.log").exists(),
            timeout=60,
            what="second node's agent to start",
        )
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    # Agents drain on SIGTERM before they exit: seconds on an idle machine, more on
    # a loaded CI box. A leaked process never exits, so the deadline still catches it.
    wait_until(lambda: leftovers(tmp_path) == [], timeout=45, what="every demo process to exit")


def test_bad_flags_fail_cleanly(tmp_path: Path) -> None:
    proc = start_demo(tmp_path, "--nodes", "0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "demo.nodes = 0: must be >= 1" in err
    assert "Traceback" not in err


@pytest.mark.timeout(240)
def test_two_routers_sharing_redis_survive_a_router_sigkill(tmp_path: Path) -> None:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    proc = start_demo(
        tmp_path, "--routers", "2", "--redis", "auto", "--nodes", "2", "--duration", "20",
        "--preemptions", "1", "--hard-kills", "0", "--lead-s", "5", "--rps", "10",
    )  # fmt: skip
    out = demo_output(proc)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["failed"] == 0 and report["requests"] > 100
    routers = report["routers"]
    # Spread like a load balancer would while both were in rotation (how long the
    # restart took, and so how much went to the other router meanwhile, is the
    # machine's business), and the restarted router came back knowing the fleet from
    # Redis (its first view after the backend was up already had ready nodes) and
    # served again: the run lasts until it has.
    spread = routers["requests_all_in_rotation"]
    assert all(n > sum(spread.values()) / 4 for n in spread.values()), routers
    (restart,) = routers["restarts"]
    assert restart["killed"] is not None and restart["back"] is not None
    assert restart["nodes_known_at_restart"] >= 1
    assert restart["served_after_back"] >= SERVED_AFTER_BACK, routers
    assert "SIGKILLed" in out and "ready nodes from Redis" in out
    assert leftovers(tmp_path) == []


def test_more_routers_need_a_shared_registry(tmp_path: Path) -> None:
    proc = start_demo(tmp_path, "--routers", "2")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.strip() == (
        "spotrelay: config error: demo.redis: more than one router needs a shared registry: "
        "--redis URL or --redis auto"
    )
    proc = start_demo(tmp_path, "--routers", "2", "--redis", "http://cache:6379")
    _, err = proc.communicate(timeout=30)
    assert (
        proc.returncode == 2
        and "demo.redis = 'http://cache:6379': scheme" in err
        and len(err.splitlines()) == 1
    )


def test_a_real_engine_gets_a_lower_default_load() -> None:
    from spotrelay.core.config import load
    from spotrelay.sim.demo_settings import DemoConfig

    sim = load(DemoConfig, None, env={})
    assert sim.demo.load_for(real_engine=False) == (20.0, 48)
    assert sim.demo.load_for(real_engine=True) == (1.0, 24)
    chosen = load(
        DemoConfig, None, env={"SPOTRELAY_DEMO_RPS": "3", "SPOTRELAY_DEMO_MAX_TOKENS": "8"}
    )
    assert chosen.demo.load_for(real_engine=True) == (3.0, 8)


def test_freezes_are_planned_after_the_other_events_and_seen_coming_back() -> None:
    import random

    from spotrelay.sim.chaos import plan_events

    plan = plan_events(60, 2, 1, random.Random(7), freezes=1, host_freezes=1)
    assert [p.kind for p in plan][3:] in (["freeze", "host_freeze"], ["host_freeze", "freeze"])
    times = [p.at_s for p in plan]
    assert times == sorted(times) and times[0] >= 9 and times[-1] <= 42
    # Without freezes a seed orders its notices and kills as before.
    assert [p.kind for p in plan_events(60, 2, 1, random.Random(7))] == [p.kind for p in plan[:3]]

    observer = FleetObserver(lambda: [], t0=0.0)
    ready = {"id": "n1", "state": "ready", "reported_state": "ready"}
    observer.observe([ready], 1.0)
    # The agent reports its hung engine: the router takes it out of routing.
    observer.observe([{**ready, "reported_state": "unhealthy"}], 2.0)
    observer.observe([ready], 5.0)
    hist = observer.histories["n1"]
    assert (hist.first_ready, hist.excluded, hist.back, hist.gone) == (1.0, 2.0, 5.0, None)


@pytest.mark.timeout(300)
def test_risk_aware_placement_resumes_fewer_streams(tmp_path: Path) -> None:
    """A rebalance recommendation 12 s ahead of the notice, long streams (agent loops) in
    the traffic: with risk-aware placement on, long streams keep off the warned node, so
    fewer are cut at reclaim and resumed than with it off. No client sees a failure
    either way."""
    common = (
        "--nodes", "3", "--duration", "24", "--preemptions", "1", "--hard-kills", "0",
        "--freezes", "0", "--host-freezes", "0", "--lead-s", "3", "--rps", "10",
        "--rebalance-lead", "12", "--long-ratio", "0.5", "--long-max-tokens", "500",
        "--seed", "5",
    )  # fmt: skip
    resumed = {}
    for mode in ("on", "off"):
        cwd = tmp_path / mode
        cwd.mkdir()
        demo_output(start_demo(cwd, *common, "--risk-placement", mode))
        report = json.loads((cwd / "out" / "report.json").read_text())
        assert report["failed"] == 0, report
        assert report["settings"]["rebalance_recommendations"], "the notice was preceded"
        resumed[mode] = report["resumed"]
    assert resumed["off"] >= 1, "long streams on the reclaimed node were cut and resumed"
    assert resumed["on"] < resumed["off"], resumed


def test_demo_prometheus_without_the_binary_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spotrelay.sim.demo_prometheus import DemoPrometheus

    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus here
    assert DemoPrometheus.start(None, tmp_path) is None  # type: ignore[arg-type]
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and "--prometheus skipped" in out
