"""The router benchmark still runs end to end (it is not part of the suite's figures).

Benchmarks print ratios for people to read and assert nothing about speed;
this only keeps ``bench/router_bench.py`` from rotting between runs: every
path it starts carries real traffic without an error, and the report has
the figures docs/benchmarks.md quotes (req/s, cores per process, streams,
fan-out). A tiny configuration on the default static engine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def test_router_bench_runs_every_path_without_errors(tmp_path: Path) -> None:
    missing = [b for b in ("haproxy", "redis-server") if not shutil.which(b)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (.ci/run installs them)")
    args = [
        sys.executable, str(REPO / "bench" / "router_bench.py"), "--quick", "--json",
        "--seconds", "0.5", "--streams", "3", "--tokens", "3", "--ramp-s", "0.2",
        "--workers", "2", "--backend", "redis", "--fanout-trials", "2",
        "--logdir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    assert report["engine"].startswith("static")
    assert set(report["throughput"]) == {"direct", "router-redis-2w", "haproxy"}
    for name, run in report["throughput"].items():
        assert run["rps"] > 0 and run["non_2xx"] == 0 and not run["socket_errors"], name
        assert set(run["cores"]) == {"path", "engine", "load_generator"}, name
    assert report["throughput"]["router-redis-2w"]["cores"]["path"] > 0
    for name, runs in report["streams"].items():
        assert [(r["ok"], r["errors"]) for r in runs] == [(3, 0)], name
    assert report["fanout"]["trials"] == 2 and report["fanout"]["p99_ms"] > 0
    assert "redis_2w_ge_1.4x_1w" not in report["summary"]["targets"]  # no 1-worker run here


def test_silent_bench_runs_end_to_end(tmp_path: Path) -> None:
    """One small run of bench/silent_bench.py: a fleet up, a node SIGKILLed, figures out."""
    args = [
        sys.executable, str(REPO / "bench" / "silent_bench.py"), "--runs", "sigkill",
        "--requests", "12", "--concurrency", "4", "--timeout", "20", "--no-single", "--json",
        "--logdir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout)["runs"]["sigkill"]
    assert run["requests"] == 12 and run["failed"] == 0 and run["wrong_text"] == 0, run
    assert run["slowest_s"] > 0


def test_assemble_bench_runs_every_path_without_errors() -> None:
    """One tiny run of bench/assemble_bench.py: every path answers, the router's CPU is read."""
    args = [
        sys.executable, str(REPO / "bench" / "assemble_bench.py"), "--tokens", "4",
        "--seconds", "0.5", "--rounds", "1", "--warmup-s", "0.2", "--connections", "2", "--json",
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout)["runs"]["4"]
    assert set(runs) == {"direct", "forward", "assemble", "stream"}
    for name, loads in runs.items():
        for load in loads.values():
            assert load["rps"] > 0 and load["non_2xx"] == 0, (name, load)
    assert runs["assemble"]["c2"]["router_cpu_us_per_request"] > 0


def test_placement_bench_runs_end_to_end(tmp_path: Path) -> None:
    """bench/placement_bench.py on a few short conversations: both spotrelay policies run,
    every turn is answered, the engines' counters yield hit rates and the oracle is computed."""
    out = tmp_path / "placement.json"
    args = [
        sys.executable, str(REPO / "bench" / "placement_bench.py"), "--conversations", "6",
        "--turns", "2", "--concurrency", "3", "--think-s", "0.05", "--only", "1 worker",
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert set(runs) == {"spotrelay cache_aware, 1 worker", "spotrelay p2c, 1 worker"}
    turns = runs["spotrelay p2c, 1 worker"]["requests"]
    assert turns >= 12  # 6 conversations of 2-3 turns, every turn answered
    for name, run in runs.items():
        assert run["requests"] == turns, name
        assert 0 < run["hit_rate"] < 1, name  # the shared system prompts hit, new turns miss
    assert 0 < report["oracle"] < 1
