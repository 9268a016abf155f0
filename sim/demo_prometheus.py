"""``spotrelay demo --prometheus``: a real Prometheus watching the demo, and the alerts it fired.

Prometheus (the Debian/upstream ``prometheus`` binary on PATH) runs on
loopback with a generated configuration: it scrapes the routers, the agents
and the engines every second (nodes come and go, so their targets are a
``file_sd`` file rewritten as the fleet changes) and evaluates the shipped
rules (``observability/prometheus/rules.yml``) every second with every
``for:`` shortened for a one-minute run: **one minute of production is one
second of demo** (``for: 15m`` becomes ``15s``). At the end the ``ALERTS``
series says which alerts fired and when, in seconds since traffic started.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from spotrelay.observability import rules_path

from .fleet import HOST, LocalFleet
from .loopback import free_port, http_ok
from .processes import ManagedProcess

log = logging.getLogger("spotrelay.demo")

INTERVAL_S = 1  # scrape interval and timeout, rule evaluation, and the alerts query's step
INTERVAL = f"{INTERVAL_S}s"
SETTLE_S = 3.0  # a last scrape and rule evaluation after the run
GONE_WAIT_S = 15.0  # at most: killed nodes still listed expire within the router's registry.ttl_s
_DURATION = re.compile(r"^(\d+)([smh])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def demo_for(duration: str) -> str:
    """A rule's ``for:`` for the demo: a minute becomes a second (at least 1 s)."""
    match = _DURATION.match(duration)
    if not match:
        raise ValueError(f"unexpected for: {duration!r}")
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    return f"{max(1, seconds // 60)}s"


def demo_rules(source: Path) -> dict[str, Any]:
    """The shipped rules with every alert's ``for:`` shortened (see :func:`demo_for`)."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        group["interval"] = INTERVAL
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = demo_for(rule["for"])
    return doc


class DemoPrometheus:
    """One Prometheus process for one demo run; :meth:`start` returns None without the binary."""

    def __init__(self, fleet: LocalFleet, workdir: Path, binary: str) -> None:
        self.fleet = fleet
        self.dir = workdir
        self.binary = binary
        self.url = ""
        self._targets = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="prom-targets", daemon=True)

    @classmethod
    def start(cls, fleet: LocalFleet, out: Path) -> DemoPrometheus | None:
        binary = shutil.which("prometheus")
        if binary is None:
            print("demo: --prometheus skipped: no prometheus binary on PATH (apt-get install "
                  "prometheus)")  # fmt: skip
            return None
        prom = cls(fleet, out / "prometheus", binary)
        prom._launch()
        return prom

    def _launch(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rules.yml").write_text(yaml.safe_dump(demo_rules(rules_path())))
        self.write_targets()
        jobs = ("spotrelay-router", "spotrelay-agent", "vllm")
        config = {
            "global": {
                "scrape_interval": INTERVAL,
                "evaluation_interval": INTERVAL,
                "scrape_timeout": INTERVAL,
            },
            "rule_files": ["rules.yml"],
            "scrape_configs": [
                {
                    "job_name": job,
                    "file_sd_configs": [{"files": [f"{job}.json"], "refresh_interval": INTERVAL}],
                }
                for job in jobs
            ],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://{HOST}:{port}"
        proc = self.fleet.procs.start(
            ManagedProcess(
                "prometheus",
                [
                    self.binary,
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address={HOST}:{port}",
                    "--log.level=warn",
                ],
                log_path=self.dir.parent / "logs" / "prometheus.log",
            )
        )
        proc.wait_ready(lambda: http_ok(self.url + "/-/ready"), timeout=30)
        self._thread.start()
        log.info("prometheus at %s (rules: %s)", self.url, self.dir / "rules.yml")

    def write_targets(self) -> None:
        """Rewrite the file_sd targets when the fleet changed (Prometheus re-reads them)."""
        nodes = [n for n in list(self.fleet.nodes.values()) if n.alive()]
        targets = {
            "spotrelay-router": [u.removeprefix("http://") for u in self.fleet.control_urls],
            "spotrelay-agent": [f"{HOST}:{n.metrics_port}" for n in nodes if n.metrics_port],
            "vllm": [n.engine_url.removeprefix("http://") for n in nodes],
        }
        text = json.dumps(targets, sort_keys=True)
        if text == self._targets:
            return
        for job, hosts in targets.items():
            doc = [{"targets": sorted(hosts), "labels": {}}]
            tmp = self.dir / f".{job}.json"
            tmp.write_text(json.dumps(doc))
            tmp.replace(self.dir / f"{job}.json")  # atomic: never a half-written file
        self._targets = text

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            self.write_targets()

    def _wait_dead_nodes_gone(self) -> None:
        deadline = time.monotonic() + GONE_WAIT_S
        while time.monotonic() < deadline:
            alive = {n.name for n in list(self.fleet.nodes.values()) if n.alive()}
            if {n.get("id") for n in self.fleet.router_nodes()} <= alive:
                return
            time.sleep(0.2)
        log.warning("the router still lists killed nodes; their alerts may be missing")

    def alerts(self, t0_wall: float) -> list[dict[str, Any]]:
        """Every alert that fired during the run: name, labels, first and last firing second.

        A node killed near the end is still listed until the router expires
        it; its alert comes after that, so wait (bounded) for the router to
        let go of every dead node, then for one more scrape and evaluation.
        """
        self._wait_dead_nodes_gone()
        time.sleep(SETTLE_S)
        self._stop.set()
        end = time.time()
        window = {"start": t0_wall, "end": end, "step": INTERVAL_S}
        query = urllib.parse.urlencode({"query": 'ALERTS{alertstate="firing"}', **window})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query_range?{query}", timeout=10) as r:
                result = json.loads(r.read())["data"]["result"]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("could not read the alerts from prometheus: %s", exc)
            return []
        out = []
        for series in result:
            labels = {k: v for k, v in series["metric"].items()
                      if k not in ("__name__", "alertstate", "alertname")}  # fmt: skip
            stamps = [float(ts) for ts, _ in series["values"]]
            out.append({
                "alert": series["metric"]["alertname"],
                "labels": labels,
                "first_firing": round(min(stamps) - t0_wall, 1),
                "last_firing": round(max(stamps) - t0_wall, 1),
            })  # fmt: skip
        return sorted(out, key=lambda a: (a["first_firing"], a["alert"]))
