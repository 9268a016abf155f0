"""``spotrelay demo --spot-shortage`` and ``--dead-agents``, run briefly end to end.

One short run covers both: during the shortage the simulated group's spot launches
fail, the controller's decision logic raises the on-demand base to cover every node
spot does not serve and all missing replacements launch on-demand in that same
controller period, the one after the first failed spot launch; after it, the base
comes down and the on-demand nodes are retired through the drain. A node whose agent
was killed first is still drained before it is reclaimed, through the local queue
stand-in. Clients see no failure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .test_demo import _demo, _leftovers


@pytest.mark.timeout(240)
def test_shortage_falls_back_to_on_demand_and_returns_to_spot(tmp_path: Path) -> None:
    proc = _demo(
        tmp_path,
        "--nodes", "3", "--duration", "20", "--preemptions", "0", "--hard-kills", "1",
        "--dead-agents", "1", "--lead-s", "5", "--rps", "8", "--seed", "3",
        "--spot-shortage", "1:11",
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=220)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"demo failed:\n{out}\n{err[-4000:]}"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["failed"] == 0 and report["succeeded"] == report["requests"] > 50

    cap = report["capacity"]
    assert cap["spot_shortage"] == [1.0, 11.0]
    assert cap["spot_launch_failures"] >= 1
    actions = [d["action"] for d in cap["decisions"]]
    assert "raise" in actions and "lower" in actions
    last_lower = max(i for i, action in enumerate(actions) if action == "lower")
    assert actions.index("raise") < last_lower  # fell back, then returned to spot
    first_raise = next(d for d in cap["decisions"] if d["action"] == "raise")
    assert "InsufficientInstanceCapacity" in first_raise["reason"]
    assert first_raise["missing"] >= 1
    on_demand = [x for x in cap["launches"] if x["lifecycle"] == "on-demand"]
    assert on_demand and all(x["t"] >= 1 for x in on_demand)
    # Every raise covers every node spot does not serve, and every node missing then
    # launches on-demand within that one controller period (no step-by-step catch-up).
    for raised in (d for d in cap["decisions"] if d["action"] == "raise"):
        assert raised["on_demand_base"] == raised["not_on_spot"], raised
        same_period = [x for x in on_demand if x["period"] == raised["period"]]
        assert len(same_period) >= raised["missing"], (raised, on_demand)
        if raised["missing"]:  # decided in the period after the first failed spot launch
            assert raised["period"] - raised["missing_failed_at"] <= 1, raised
    assert all(any(d["period"] == x["period"] for d in cap["decisions"]) for x in on_demand)
    assert {r["node"] for r in cap["on_demand_retired"]} == {x["node"] for x in on_demand}
    assert cap["samples"][-1]["on_demand"] == 0  # back on spot at the end

    # The dead agent's node: drained through the queue, well before the router's
    # registry would have expired it (ttl 6 s), and before it was reclaimed.
    dead = next(e for e in report["events"] if e["type"] == "dead_agent")
    assert dead["excluded"] - dead["at"] < 3
    assert dead["excluded"] < dead["killed"]
    assert cap["queue"]["drained"] >= 1
    assert cap["queue"]["events"] >= 2 and cap["queue"].get("duplicate", 0) >= 1

    assert re.search(r"^on-demand launched\s+node-\d", out, re.MULTILINE)
    assert "spot shortage window     1s - 11s" in out
    png = (tmp_path / "out" / "timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert _leftovers(tmp_path) == []


def test_bad_shortage_window_is_a_one_line_error(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--spot-shortage", "20:10")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "demo.spot_shortage = '20:10': START must be >= 0 and below END" in err
    assert "Traceback" not in err
