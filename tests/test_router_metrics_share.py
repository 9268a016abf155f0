"""The per-worker gauge snapshots behind one /metrics for a multi-worker router.

The end-to-end behaviour (a real gunicorn with two workers, a worker killed)
is in tests/test_router_fleet.py; these drive the board with a fake clock.
"""

from __future__ import annotations

import os
from pathlib import Path

from spotrelay.router import metrics_share
from spotrelay.router.metrics_share import SnapshotBoard
from tests.support.clock import Clock


def snap(active: int) -> dict:
    return {"in_flight": {"n-1": active}, "active_requests": active, "active_retries": 0,
            "backend_up": True}  # fmt: skip


def test_each_worker_reads_the_others_fresh_snapshots(tmp_path: Path) -> None:
    clock = Clock()
    a, b, c = (SnapshotBoard(tmp_path, pid, clock=clock, max_age_s=5) for pid in (1, 2, 3))
    a.publish(snap(1))
    b.publish(snap(2))
    clock.now += 4
    c.publish(snap(3))
    assert sorted(s["active_requests"] for s in a.others()) == [2, 3]
    clock.now += 2  # a and b published 6 s ago: a hung or vanished worker stops counting
    assert [s["pid"] for s in c.others()] == []
    assert [s["pid"] for s in a.others()] == [3]
    b.publish(snap(5))  # and counts again once it publishes
    assert sorted(s["active_requests"] for s in a.others()) == [3, 5]


def test_torn_or_foreign_files_are_skipped(tmp_path: Path) -> None:
    board = SnapshotBoard(tmp_path, 1, clock=Clock())
    (tmp_path / f"{metrics_share.SNAPSHOT_PREFIX}7.json").write_text('{"pid": 7, "at"')
    (tmp_path / f"{metrics_share.SNAPSHOT_PREFIX}8.json").write_text("[1, 2]")
    (tmp_path / "counter_8.db").write_bytes(b"\0" * 16)  # prometheus_client's own files
    assert board.others() == []
    board.publish(snap(1))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_master_hooks_forget_a_dead_worker_and_clean_up(tmp_path: Path) -> None:
    before = os.environ.get(metrics_share.ENV)
    directory = metrics_share.prepare(parent=str(tmp_path))
    try:
        assert os.environ[metrics_share.ENV] == directory and os.listdir(directory) == []
        dead, alive = SnapshotBoard(directory, 41), SnapshotBoard(directory, 42)
        dead.publish(snap(3))
        alive.publish(snap(1))
        metrics_share.worker_exited(directory, 41)
        assert [s["pid"] for s in alive.others()] == []
        metrics_share.worker_exited(directory, 41)  # twice is harmless
    finally:
        metrics_share.remove(directory)
        if before is not None:
            os.environ[metrics_share.ENV] = before
    assert not os.path.exists(directory)
    assert os.environ.get(metrics_share.ENV) == before
