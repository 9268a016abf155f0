"""The demo's report: one summary dict, rendered as a table, ``report.json`` and a chart.

The terminal table and ``report.json`` are rendered from the same dict, so
they cannot disagree; ``docs/demo.md`` explains every figure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .chaos import Sample
from .traffic import RequestRecord

NOT_VERIFIED = "not verified (real engine)"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a real request)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[rank - 1], 1)


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
    }


def summarise(
    records: Sequence[RequestRecord],
    router: dict[str, float],
    events: list[dict[str, Any]],
    samples: Sequence[Sample],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Everything the demo measured, as the JSON document it writes."""
    verify = settings.get("verify_text", True)
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    streams = [r for r in records if r.stream]
    return {
        "requests": len(records),
        "succeeded": len(ok),
        "failed": len(failed),
        "retried": int(router.get("retried", 0)),
        "resumed": int(router.get("resumed", 0)),
        "streams": {
            "total": len(streams),
            "succeeded": sum(1 for r in streams if r.ok),
            "broken": sum(1 for r in streams if not r.ok),
        },
        "by_kind": {
            kind: sum(1 for r in records if r.kind == kind)
            for kind in ("completion", "chat", "responses")
        },
        # A real model's text has no reference to compare with: say so, not 0.
        "verified_text": sum(1 for r in records if r.verified) if verify else NOT_VERIFIED,
        "latency_ms": _percentiles([r.latency_ms for r in ok]),
        "ttft_ms": _percentiles([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        "router": router,
        "events": events,
        "failures": [
            {"t": round(r.started, 2), "kind": r.kind, "stream": r.stream, "error": r.error}
            for r in failed[:20]
        ],
        "fleet": [{"t": s.t, "ready": s.ready, "draining": s.draining} for s in samples],
        "settings": settings,
    }


def write_json(report: dict[str, Any], out: Path) -> Path:
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.2f}s" if isinstance(value, float) else str(value))


def render_table(report: dict[str, Any]) -> str:
    """The terminal summary (plain text, so it reads the same in CI logs)."""
    lat, ttft, streams = report["latency_ms"], report["ttft_ms"], report["streams"]
    lines = [
        "spotrelay demo report",
        "=====================",
        f"requests sent            {report['requests']}",
        f"succeeded                {report['succeeded']}",
        f"client-visible failures  {report['failed']}",
        f"retried by the router    {report['retried']}",
        f"streams resumed          {report['resumed']}",
        f"streams ok / broken      {streams['succeeded']} / {streams['broken']}",
        f"text verified exact      {report['verified_text']}",
        f"latency ms p50/p95/p99   {lat['p50']} / {lat['p95']} / {lat['p99']}",
        f"first token ms p50/p95/p99  {ttft['p50']} / {ttft['p95']} / {ttft['p99']}",
        "",
        "events (seconds after traffic started)",
        f"{'event':<12}{'node':<9}{'at':>8}{'excluded':>10}{'drained':>9}{'killed':>8}"
        f"{'thawed':>8}{'back':>8}  {'replacement':<12}{'ready':>7}",
    ]
    for ev in report["events"]:
        lines.append(
            f"{ev['type']:<12}{ev['node']:<9}{_fmt(ev['at']):>8}{_fmt(ev.get('excluded')):>10}"
            f"{_fmt(ev.get('drained')):>9}{_fmt(ev.get('killed')):>8}"
            f"{_fmt(ev.get('thawed')):>8}{_fmt(ev.get('back')):>8}"
            f"  {ev.get('replacement') or '-':<12}{_fmt(ev.get('replacement_ready')):>7}"
        )
    routers = report.get("routers") or {}
    if routers.get("count", 1) > 1:
        spread = ", ".join(f"{name} {n}" for name, n in routers["requests"].items())
        lines += ["", f"routers (shared registry)  requests: {spread}"]
        for r in routers["restarts"]:
            lines.append(
                f"  {r['router']} out of rotation {_fmt(r['out_of_rotation'])}, SIGKILLed "
                f"{_fmt(r['killed'])}, back {_fmt(r['back'])} knowing "
                f"{r['nodes_known_at_restart']} ready nodes from Redis, answered "
                f"{r['served_after_back']} requests after"
            )
    if report.get("capacity"):
        lines += capacity_lines(report["capacity"])
    lines += alert_lines(report.get("alerts"))
    if report["failures"]:
        lines += ["", "first failures:"]
        lines += [
            f"  t={f['t']}s {f['kind']} stream={f['stream']}: {f['error']}"
            for f in report["failures"]
        ]
    return "\n".join(lines)


def capacity_lines(cap: dict[str, Any]) -> list[str]:
    """The capacity section: shortage, fallback decisions, return to spot, the queue."""
    window = cap.get("spot_shortage")
    queue = cap.get("queue", {})
    on_demand = [x["node"] for x in cap.get("launches", []) if x["lifecycle"] == "on-demand"]
    lines = [
        "",
        "capacity (seconds after traffic started)",
        f"spot shortage window     {'-' if not window else f'{window[0]:g}s - {window[1]:g}s'}",
        f"spot launch failures     {cap.get('spot_launch_failures', 0)}",
        f"on-demand launched       {', '.join(on_demand) or '-'}",
        f"back to spot             {', '.join(_retired(cap)) or '-'}",
        f"queue events / drained / duplicates  {queue.get('events', 0)} / "
        f"{queue.get('drained', 0)} / {queue.get('duplicate', 0)}",
    ]
    for d in cap.get("decisions", []):
        lines.append(f"  t={d['t']:>6.2f}s {d['action']:<6} {d['reason']}")
    return lines


def _retired(cap: dict[str, Any]) -> list[str]:
    return [f"{r['node']} retired at {r['t']:.2f}s" for r in cap.get("on_demand_retired", [])]


def _draw_capacity(top: Any, bottom: Any, cap: dict[str, Any] | None) -> None:
    """Shade the spot shortage, plot on-demand nodes, mark each fallback decision."""
    if not cap:
        return
    window = cap.get("spot_shortage")
    if window:
        for ax in (top, bottom):
            ax.axvspan(window[0], window[1], color="tab:red", alpha=0.08, label=None)
        top.annotate("spot shortage", (window[0], top.get_ylim()[1] * 0.8), fontsize=8)
    samples = cap.get("samples", [])
    if samples:
        _step(bottom, samples, "on_demand", "on-demand nodes", "tab:purple")
    for d in cap.get("decisions", []):
        color = "tab:purple" if d["action"] == "raise" else "tab:cyan"
        bottom.axvline(d["t"], color=color, linestyle="-.", linewidth=1)
        _label(bottom, d["t"], 0.9, f"{d['action']} → {d['on_demand_base']}", color, 7)


def _step(ax: Any, samples: list[dict[str, Any]], key: str, label: str, color: str) -> None:
    """One count over time (``samples``: ``{"t": ..., key: ...}``) as a step line."""
    ax.step(
        [x["t"] for x in samples], [x[key] for x in samples], where="post", label=label, color=color
    )


def _label(ax: Any, x: float, height: float, text: str, color: str, size: int) -> None:
    """A vertical label left of the line at ``x``, ``height`` of the way up."""
    ax.annotate(
        text, (x, ax.get_ylim()[1] * height), fontsize=size, rotation=90, va="top", ha="right",
        color=color,
    )  # fmt: skip


EVENT_LABELS = {
    "spot_notice": "notice",
    "dead_agent": "dead agent + notice",
    "hard_kill": "kill",
    "freeze": "freeze",
    "host_freeze": "host freeze",
}
EVENT_COLORS = {
    "spot_notice": "tab:orange",
    "dead_agent": "tab:orange",
    "hard_kill": "tab:red",
    "freeze": "tab:blue",
    "host_freeze": "tab:brown",
}


def write_chart(
    report: dict[str, Any], records: Sequence[RequestRecord], out: Path, duration_s: float
) -> Path:
    """``timeline.png``: throughput, failures and ready nodes over time, events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    _draw_traffic(top, records, duration_s)
    _step(bottom, report["fleet"], "ready", "ready nodes", "tab:green")
    _step(bottom, report["fleet"], "draining", "draining / excluded", "tab:orange")
    bottom.set_ylabel("nodes")
    bottom.set_xlabel("seconds since traffic started")
    _draw_events(top, bottom, report["events"])
    _draw_capacity(top, bottom, report.get("capacity"))
    for restart in (report.get("routers") or {}).get("restarts", []):
        if restart.get("killed") is not None:
            for ax in (top, bottom):
                ax.axvline(restart["killed"], color="tab:purple", linestyle="-.", linewidth=1)
            _label(top, restart["killed"], 0.95, f"SIGKILL {restart['router']}", "tab:purple", 8)
    top.legend(loc="lower left", fontsize=8)
    bottom.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = out / "timeline.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_traffic(ax: Any, records: Sequence[RequestRecord], duration_s: float) -> None:
    """Completed requests and client-visible failures per second."""
    seconds = max(1, math.ceil(max([duration_s] + [r.finished for r in records])))
    done = [0] * (seconds + 1)
    bad = [0] * (seconds + 1)
    for r in records:
        slot = min(seconds, int(r.finished))
        (done if r.ok else bad)[slot] += 1
    xs = list(range(seconds + 1))
    ax.plot(xs, done, label="completed requests/s", color="tab:blue")
    ax.bar(xs, bad, label="client-visible failures/s", color="tab:red", width=0.8)
    ax.set_ylabel("requests / s")
    ax.set_title("spotrelay demo: traffic through preemptions")


def _draw_events(top: Any, bottom: Any, events: list[dict[str, Any]]) -> None:
    """A line per injected event, its reclaim dotted, a freeze shaded until it ended."""
    for ev in events:
        color = EVENT_COLORS.get(ev["type"], "tab:red")
        # A freeze lasts: shade it until the thaw (or the host's termination).
        frozen_until = ev.get("thawed") if ev["type"] == "freeze" else None
        if ev["type"] == "host_freeze":
            frozen_until = ev.get("killed")
        for ax in (top, bottom):
            ax.axvline(ev["at"], color=color, linestyle="--", linewidth=1)
            if frozen_until is not None:
                ax.axvspan(ev["at"], frozen_until, color=color, alpha=0.12)
            elif ev["type"] in ("spot_notice", "dead_agent") and ev.get("killed") is not None:
                ax.axvline(ev["killed"], color="tab:gray", linestyle=":", linewidth=1)
        label = f"{EVENT_LABELS.get(ev['type'], ev['type'])} {ev['node']}"
        _label(top, ev["at"], 0.95, label, color, 8)


def alert_lines(alerts: list[dict[str, Any]] | None) -> list[str]:
    """The report's alert table (``None``: the run had no Prometheus)."""
    if alerts is None:
        return []
    if not alerts:
        return ["", "alerts fired (Prometheus): none"]
    lines = ["", "alerts fired (Prometheus; seconds after traffic started)"]
    for a in alerts:
        where = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k != "severity")
        lines.append(
            f"  {a['alert']:<34}{a['first_firing']:>7} - {a['last_firing']:<7}"
            f"{a['labels'].get('severity', '')}  {where}"
        )
    return lines
