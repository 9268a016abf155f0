"""``spotrelay up`` after the apply: wait for the pool's desired ready, registered nodes.

An apply returns as soon as AWS accepted the Auto Scaling group; the nodes
then boot, install, load the model and register (minutes: docs/deploy.md,
"Cold start"). ``up`` reports ready only once the group has
``desired_capacity`` instances that a router has as ``ready``, printing a
progress line whenever the picture changes (and a heartbeat line every
minute), and gives up after ``up.wait_timeout_s``. Clock and sleep are
injected so the loop is tested without waiting.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

HEARTBEAT_S = 60.0


def progress_line(report: Any, elapsed: float) -> str:
    """``[ 95s] ready 1/2 | InService 1, Pending:Wait 1 | router: ready 1``."""
    desired = report.desired
    rows = report.instances
    states = Counter(r.get("lifecycle_state", "?") for r in rows)
    routed = Counter(r["router_state"] for r in rows if r["router_state"] not in (None, "unknown"))
    parts = [f"ready {report.ready}/{'?' if desired is None else desired}"]
    if states:
        parts.append(", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    if routed:
        parts.append("router: " + ", ".join(f"{k} {v}" for k, v in sorted(routed.items())))
    never = sum(1 for r in rows if r.get("note"))
    if never:
        parts.append(f"never registered {never}")
    if report.errors:
        parts.append(f"errors: {report.errors[-1]}")
    return f"[{elapsed:5.0f}s] " + " | ".join(parts)


def done(report: Any) -> bool:
    desired = report.desired
    return desired is not None and report.ready >= desired


def wait_ready(
    fetch: Callable[[], Any],
    *,
    timeout_s: float,
    interval_s: float,
    echo: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    done_when: Callable[[Any], bool] | None = None,
) -> tuple[bool, Any]:
    """Poll ``fetch()`` (a StatusReport) until done or ``timeout_s``; (ok, last report).

    Done means the group's *actual* desired capacity is ready (what scaling,
    the controller or ``spotrelay scale`` set, not the value Terraform created
    the group with), or ``done_when(report)`` when given.
    """
    finished = done_when or done
    start = clock()
    last_line = ""
    last_echo = -HEARTBEAT_S
    while True:
        report = fetch()
        elapsed = clock() - start
        line = progress_line(report, elapsed)
        changed = line.split("] ", 1)[1] != last_line.split("] ", 1)[-1]
        if changed or elapsed - last_echo >= HEARTBEAT_S:
            echo(line)
            last_line, last_echo = line, elapsed
        if finished(report):
            return True, report
        if elapsed + interval_s > timeout_s:
            return False, report
        sleep(interval_s)
