"""The Grafana dashboard: generated from its table, and every query reads what really exports.

A router under gunicorn, a simulator engine and an agent on the IMDS emulator
run on loopback; after some traffic (plain, streamed, a 404 and a 400) their
/metrics are scraped and every metric any panel names must be among them
(or be a recording rule of observability/prometheus/rules.yml).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from spotrelay.observability import dashboard, dashboard_path, rules_path
from spotrelay.observability.promql import exported_names, metric_names
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup

from .support import (
    ROUTER_TOKEN,
    router_nodes,
    start_agent,
    start_imds,
    start_router,
    start_sim_vllm,
)

pytestmark = pytest.mark.timeout(90)
MODEL = "sim-model"


def _panels() -> list[dict]:
    return [p for p in json.loads(dashboard_path().read_text())["panels"] if p["type"] != "row"]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def test_committed_dashboard_is_what_the_generator_writes() -> None:
    assert dashboard_path().read_text() == dashboard.render(), (
        "run: python -m spotrelay.observability.dashboard"
    )


def test_every_panel_has_a_title_a_unit_and_queries() -> None:
    panels = _panels()
    assert len(panels) >= 12
    for panel in panels:
        assert panel["title"].strip(), panel["id"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    ids = [p["id"] for p in json.loads(dashboard_path().read_text())["panels"]]
    assert len(ids) == len(set(ids))


def _traffic(router_url: str) -> None:
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=router_url + "/v1", api_key="unused", max_retries=0)
    client.completions.create(model=MODEL, prompt="hello", max_tokens=8)
    for _ in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
    ):
        pass
    with pytest.raises(NotFoundError):
        client.completions.create(model="nobody-serves-this", prompt="x", max_tokens=1)
    bad = urllib.request.Request(router_url + "/v1/completions", data=b"{oops", method="POST")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad, timeout=10)


def test_every_query_names_a_metric_the_components_export(
    procs: ProcessGroup, logdir: Path
) -> None:
    router = start_router(procs, logdir)
    engine = start_sim_vllm(procs, logdir, model=MODEL)
    imds = start_imds(procs, logdir, "--instance-id", "i-0dashboard000001", "--lifecycle", "spot")
    agent = start_agent(
        procs,
        logdir,
        {
            "router": {"urls": [router.control_url], "node_token": ROUTER_TOKEN},
            "engine": {"url": engine.url, "model": MODEL, "systemd_unit": None},
            "imds": {"url": imds.url, "poll_interval_s": 0.25},
            "heartbeat": {"interval_s": 0.5},
            "state_dir": str(logdir / "agent-state"),
        },
    )
    wait_until(
        lambda: any(n["state"] == "ready" for n in router_nodes(router.url).values()),
        timeout=20,
        what="the agent's node to be ready at the router",
    )
    _traffic(router.url)
    exported: set[str] = set()
    for url in (router.control_url + "/metrics", engine.url + "/metrics", agent.metrics_url):
        exported |= exported_names(_get(url))
    rules = yaml.safe_load(rules_path().read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    missing = {
        (panel["title"], name)
        for panel in _panels()
        for target in panel["targets"]
        for name in metric_names(target["expr"])
        if name not in exported and name not in recorded
    }
    assert missing == set(), "panels read metrics nothing exports"
    # the scrape really holds the fleet the panels draw
    assert any(
        line.startswith("spotrelay_router_model_nodes{")
        and 'lifecycle="spot"' in line
        and 'state="ready"' in line
        and line.endswith(" 1.0")
        for line in _get(router.control_url + "/metrics").splitlines()
    )
