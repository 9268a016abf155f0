"""One ``/metrics`` for a router that runs several worker processes.

Why: gunicorn hands each scrape to whichever worker accepts the connection.
With per-worker counters, successive scrapes of one router read different
workers: counters jump back and forth (``rate()`` sees resets) and every
total is a fraction of the router's. So, with more than one worker:

* Counters and histograms use prometheus_client's multiprocess mode: one
  memory-mapped file per worker in a directory the gunicorn master makes
  before it forks, summed at scrape time. A worker that exits leaves its
  file, so totals never go back when gunicorn replaces a worker.
* The gauges the router computes at scrape time from one worker's own state
  (requests in flight per node, active requests and retries, whether the
  worker reaches Redis) cannot go through those files: they have no way to
  drop a series, and node ids come and go with every spot reclaim. Each
  worker instead writes a small JSON snapshot of them once a second
  (:class:`SnapshotBoard`); the worker answering the scrape sums the fresh
  snapshots of the others with its own live values.

With one worker none of this is used: metrics stay in the worker's memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spotrelay.core.ticker import Ticker

log = logging.getLogger("spotrelay.router")

ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when a metric is created
SNAPSHOT_PREFIX = "worker-state-"
PUBLISH_INTERVAL_S = 1.0
MAX_AGE_S = 5.0  # a snapshot older than this is from a worker that hangs or is gone


def prepare(parent: str | None = None) -> str:
    """A fresh, private directory for the workers' metric files, announced in the environment.

    Runs in the gunicorn master before any worker exists (and before any
    metric is created), so every worker inherits the setting. Fresh on every
    start: prometheus_client would otherwise add a previous run's counts.
    ``parent`` is systemd's ``RuntimeDirectory`` under the packaged unit: a
    router runs for months and systemd-tmpfiles deletes files in /tmp (even a
    private one) that have not changed for ten days, which would take idle
    counters out of the sum.
    """
    directory = tempfile.mkdtemp(prefix="spotrelay-router-metrics-", dir=parent)
    os.environ[ENV] = directory
    return directory


def worker_exited(directory: str, pid: int) -> None:
    """gunicorn's ``child_exit``: forget the worker's gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, f"{SNAPSHOT_PREFIX}{pid}.json"))


def remove(directory: str) -> None:
    """gunicorn's ``on_exit``: the files mean nothing to the next start."""
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(ENV) == directory:
        del os.environ[ENV]


class SnapshotBoard:
    """Per-worker gauge snapshots, one small JSON file per worker in the shared directory."""

    def __init__(
        self,
        directory: str | Path,
        pid: int | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self.directory = Path(directory)
        self.pid = os.getpid() if pid is None else pid
        self.clock = clock
        self.max_age_s = max_age_s

    def _path(self, pid: int) -> Path:
        return self.directory / f"{SNAPSHOT_PREFIX}{pid}.json"

    def publish(self, snapshot: Mapping[str, Any]) -> None:
        """Replace this worker's snapshot atomically (readers never see half a file)."""
        doc = json.dumps({"pid": self.pid, "at": self.clock(), **snapshot}, separators=(",", ":"))
        tmp = self.directory / f".{SNAPSHOT_PREFIX}{self.pid}.tmp"
        tmp.write_text(doc)
        os.replace(tmp, self._path(self.pid))

    def others(self) -> list[dict[str, Any]]:
        """Fresh snapshots of the other workers; unreadable or stale ones are skipped."""
        now = self.clock()
        found = []
        for path in self.directory.glob(f"{SNAPSHOT_PREFIX}*.json"):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):  # gone between glob and read, or foreign
                continue
            if not isinstance(doc, dict) or doc.get("pid") == self.pid:
                continue
            at = doc.get("at")
            if isinstance(at, int | float) and now - at <= self.max_age_s:
                found.append(doc)
        return found


class Publisher(Ticker):
    """Publishes this worker's snapshot every ``interval_s`` (a :class:`Ticker`)."""

    name = "metrics-board"

    def __init__(
        self,
        board: SnapshotBoard,
        snapshot: Callable[[], Mapping[str, Any]],
        interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        super().__init__(interval_s)
        self.board = board
        self.snapshot = snapshot

    def start(self) -> None:
        self.tick()  # at once: a scrape right after start sees this worker
        super().start()

    def tick(self) -> None:
        try:
            self.board.publish(self.snapshot())
        except OSError as exc:  # a full or vanished directory must not stop the worker
            log.warning("metrics snapshot not written: %s", exc)
