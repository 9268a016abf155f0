"""The Grafana dashboard "spotrelay fleet", generated from the panel table below.

Edit :data:`ROWS` and run ``python -m spotrelay.observability.dashboard`` to
rewrite ``grafana/spotrelay.json`` (tests check that the committed file is
what this produces, and that every metric a query names is exported by a
running router, agent or engine). A table of plain data keeps a panel one
line to read; the JSON is Grafana's dashboard model (schema 39), with the
Prometheus data source as a variable so the file imports anywhere.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from . import dashboard_path

RATE = "$__rate_interval"
STEP = "$__interval"  # per-bar increase: events on a time axis


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""
    bars: bool = False  # events on a time axis: one bar per interval


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Fleet at a glance", (
        Panel("Nodes by state", "short", (
            ("max by (state) (spotrelay_router_nodes)", "{{state}}"),
        ), "Registered nodes as the best-informed router sees them"),
        Panel("Ready nodes by purchase option", "short", (
            ('max by (lifecycle) (sum by (lifecycle, instance) '
             '(spotrelay_router_model_nodes{state="ready"}))', "{{lifecycle}}"),
        ), "spot, or on-demand standing in for spot (the controller's fallback)"),
        Panel("Ready vs desired nodes per model", "short", (
            ("spotrelay:model_ready_nodes", "ready {{model}}"),
            ("spotrelay:model_desired_nodes", "desired {{model}}"),
        ), "Recording rules of observability/prometheus/rules.yml"),
    )),
    ("Requests", (
        Panel("Requests by status", "reqps", (
            (f"sum by (status) (rate(spotrelay_router_requests_total[{RATE}]))", "{{status}}"),
        )),
        Panel("Client error ratio (5xx)", "percentunit", (
            (f'sum(rate(spotrelay_router_requests_total{{status=~"5.."}}[{RATE}])) '
             f"/ sum(rate(spotrelay_router_requests_total[{RATE}]))", "5xx"),
        ), "What clients saw after retries and resumes"),
        Panel("Retries by reason", "reqps", (
            (f"sum by (reason) (rate(spotrelay_router_retries_total[{RATE}]))", "{{reason}}"),
            (f"sum(rate(spotrelay_router_retry_budget_exhausted_total[{RATE}]))",
             "budget exhausted"),
        )),
        Panel("Stream resumes and hedges", "reqps", (
            (f"sum by (outcome) (rate(spotrelay_router_stream_resumes_total[{RATE}]))",
             "resume {{outcome}}"),
            (f"sum by (outcome) (rate(spotrelay_router_hedges_total[{RATE}]))",
             "hedge {{outcome}}"),
        )),
    )),
    ("Added latency", (
        Panel("Time to first token (router) p50 / p99", "s", (
            (f"histogram_quantile(0.5, sum by (le) "
             f"(rate(spotrelay_router_ttft_seconds_bucket[{RATE}])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) "
             f"(rate(spotrelay_router_ttft_seconds_bucket[{RATE}])))", "p99"),
        )),
        Panel("Upstream latency p99 and resume seam p99", "s", (
            (f"histogram_quantile(0.99, sum by (le) "
             f"(rate(spotrelay_router_upstream_latency_seconds_bucket[{RATE}])))", "upstream"),
            (f"histogram_quantile(0.99, sum by (le) "
             f"(rate(spotrelay_router_resume_seam_seconds_bucket[{RATE}])))", "resume seam"),
        ), "Resume seam: break to the first new content relayed to the client"),
    )),
    ("Drains and notices", (
        Panel("Interruption notices (IMDS)", "short", (
            (f"sum by (type) (increase(spotrelay_agent_events_total[{STEP}]))", "{{type}}"),
        ), bars=True),
        Panel("Drains started and deadlines missed", "short", (
            (f"sum by (reason) (increase(spotrelay_agent_drains_total[{STEP}]))", "{{reason}}"),
            (f"sum(increase(spotrelay_agent_drain_deadline_missed_total[{STEP}]))",
             "deadline missed"),
        ), bars=True),
        Panel("Node events at the routers", "short", (
            (f"sum by (event) (increase(spotrelay_router_node_events_total[{STEP}]))",
             "{{event}}"),
        ), "expired = heartbeats stopped without a drain", bars=True),
        Panel("Engines reported unhealthy", "short", (
            (f"sum by (reason) (increase(spotrelay_agent_engine_unhealthy_total[{STEP}]))",
             "{{reason}}"),
        ), "Hung or stalled engines the agents took out of rotation", bars=True),
        Panel("Drain duration p90", "s", (
            (f"histogram_quantile(0.9, sum by (le) "
             f"(rate(spotrelay_agent_drain_duration_seconds_bucket[{RATE}])))", "p90"),
        )),
    )),
    ("Engines", (
        Panel("Engine queue", "short", (
            ("sum by (instance) (vllm:num_requests_waiting)", "waiting {{instance}}"),
            ("sum by (instance) (vllm:num_requests_running)", "running {{instance}}"),
        )),
        Panel("Prefix-cache hit rate", "percentunit", (
            (f"sum by (instance) (rate(vllm:prefix_cache_hits_total[{RATE}])) "
             f"/ sum by (instance) (rate(vllm:prefix_cache_queries_total[{RATE}]))",
             "{{instance}}"),
        )),
        Panel("KV-cache usage", "percentunit", (
            ("max by (instance) (vllm:kv_cache_usage_perc)", "{{instance}}"),
        )),
    )),
)  # fmt: skip

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24


def _panel(panel: Panel, pid: int, x: int, y: int, w: int) -> dict:
    custom = {"drawStyle": "bars", "fillOpacity": 80} if panel.bars else {"fillOpacity": 10}
    return {
        "id": pid,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                "datasource": DATASOURCE,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def build() -> dict:
    """The dashboard model: one collapsed-free row per group, panels side by side."""
    panels: list[dict] = []
    pid, y = 1, 0
    for row_title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})  # fmt: skip
        pid, y = pid + 1, y + 1
        w = WIDTH // len(row)
        for i, panel in enumerate(row):
            panels.append(_panel(panel, pid, i * w, y, w))
            pid += 1
        y += 8
    return {
        "uid": "spotrelay-fleet",
        "title": "spotrelay fleet",
        "tags": ["spotrelay"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else dashboard_path()
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
