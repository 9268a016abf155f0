"""``spotrelay agent check``: what IMDS, the engine and each router say, in one look.

Exit code 0 iff the node is ready to serve: the engine is healthy and lists
the model, IMDS reports no event the agent would drain for now (the agent's
own :class:`.policy.EventPolicy` decides), no drain is recorded in the state
file, and every router answers and accepts the node token.
Read-only: it registers nothing and changes nothing.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from spotrelay.core.control_api import NodeList
from spotrelay.core.interruptions import EventParseError, iso
from spotrelay.core.secrets import read_token

from .detect import EngineDetector
from .drainstore import STATE_FILE, StateStore
from .engine import EngineProbe, ProcessWatch
from .imds import Identity, ImdsClient, ImdsError
from .lifecycle import LifecycleHook
from .monitors import all_monitors
from .policy import Action, EventPolicy
from .routers import RouterClient, RouterError
from .settings import AgentConfig


def _find_node(nodes: NodeList, node_id: str) -> dict[str, Any] | None:
    """Our entry in ``GET /nodes``, as the router wrote it."""
    return next((n.to_json() for n in nodes if n.id == node_id), None)


@dataclass
class Findings:
    """What the check found wrong: problems make the node not ready, warnings do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def gather(cfg: AgentConfig, config_path: str | None) -> dict[str, Any]:
    """Everything the check looks at, as a JSON-able dict with a ``problems`` list."""
    found = Findings()
    out: dict[str, Any] = {"config": {"path": config_path, "valid": True}}
    imds = ImdsClient(cfg.imds.url, timeout_s=cfg.imds.timeout_s, token_ttl_s=60)
    identity = None
    try:
        identity = imds.identity()
        out["imds"] = {"ok": True, **identity.__dict__}
    except ImdsError as exc:
        out["imds"] = {"ok": False, "error": str(exc)}
        found.problems.append(f"IMDS: {exc}")
    out["events"] = _check_events(cfg, imds, found) if identity is not None else []
    node_id = cfg.node.id or (identity.instance_id if identity else None)
    out["node_id"] = node_id
    out["engine"] = _check_engine(cfg, found)
    out["drain"] = _check_drain(cfg, identity, found)
    lifecycle = _check_lifecycle(cfg, identity, found)
    if lifecycle is not None:
        out["lifecycle"] = lifecycle
    out["routers"] = _check_routers(cfg, node_id, found)
    out["problems"] = found.problems
    out["warnings"] = found.warnings
    out["ready"] = not found.problems
    return out


def _check_events(cfg: AgentConfig, imds: ImdsClient, found: Findings) -> list[dict[str, Any]]:
    """The events IMDS reports now; those the agent would drain for now are problems."""
    events = []
    policy = EventPolicy.from_config(cfg.drain)
    for monitor in all_monitors():
        try:
            seen = monitor.observe(imds.get(monitor.path))
        except (ImdsError, EventParseError) as exc:
            found.warnings.append(f"IMDS {monitor.name}: {exc}")
            continue
        for event in seen:
            events.append(event.describe())
            decision = policy.decide(event, time.time())
            text = f"IMDS reports {event.kind} ({event.key}): {decision.why}"
            (found.problems if decision.action is Action.DRAIN else found.warnings).append(text)
    return events


def _check_engine(cfg: AgentConfig, found: Findings) -> dict[str, Any]:
    """The engine: healthy, serving the model, its kind and load, its process."""
    probe = EngineProbe(
        cfg.engine.url, timeout_s=cfg.engine.timeout_s, health_path=cfg.engine.health_path
    )
    status = probe.probe()
    engine = EngineDetector(
        probe, kind=cfg.engine.kind, capabilities=cfg.engine.capabilities, log_findings=False
    ).observe(status.healthy)
    watch = ProcessWatch(cfg.engine.process_name, probe.port)
    status.process_alive = watch.alive()
    served = status.serves(cfg.engine.model)
    if not status.healthy:
        found.problems.append(f"engine not healthy: {status.error or 'no answer'}")
    elif not served:
        want = cfg.engine.model or "any model"
        found.problems.append(f"engine does not list {want} (lists {status.models})")
    if cfg.engine.process_name and watch.pid is None:
        found.warnings.append(f"no process matches engine.process_name={cfg.engine.process_name!r}")
    return {
        "url": cfg.engine.url,
        "healthy": status.healthy,
        "models": status.models,
        "serves": served,
        "health_path": "/v1/models" if probe.health_fallback else cfg.engine.health_path,
        **engine.to_json(),
        "load": status.load.__dict__ if status.load else None,
        "process": {"name": cfg.engine.process_name, "pid": watch.pid},
        "error": status.error,
    }


def _check_drain(
    cfg: AgentConfig, identity: Identity | None, found: Findings
) -> dict[str, Any] | None:
    """This instance's recorded drain, if any: a node that drained is not ready."""
    state = StateStore(Path(cfg.state_dir) / STATE_FILE).load()
    if state is not None and identity is not None and state.instance_id != identity.instance_id:
        state = None
    if state is None:
        return None
    done = "finished" if state.finished_at else "in progress"
    found.problems.append(f"drain {done} ({', '.join(state.reasons)})")
    return state.to_json()


def _check_lifecycle(
    cfg: AgentConfig, identity: Identity | None, found: Findings
) -> dict[str, Any] | None:
    """The group's lifecycle hooks (optional AWS calls; failures are warnings, not readiness)."""
    lc = cfg.lifecycle
    hooks = {k: v for k, v in (("hook", lc.hook_name), ("launch_hook", lc.launch_hook_name)) if v}
    if not (lc.asg_name and hooks):
        return None
    result: dict[str, Any] = {}
    for key, name in hooks.items():
        hook = LifecycleHook(
            lc.asg_name,
            name,
            identity.instance_id if identity else "unknown",
            region=lc.region or (identity.region if identity else None),
            endpoint_url=lc.endpoint_url,
        )
        try:
            result[key] = hook.describe_hook()
        except Exception as exc:  # credentials, permissions, network
            found.warnings.append(f"lifecycle hook not checked: {exc}")
            return {"error": str(exc)}
        if result[key] is None:
            found.warnings.append(f"lifecycle hook {name} not found on {lc.asg_name}")
    return result


def _check_routers(cfg: AgentConfig, node_id: str | None, found: Findings) -> list[dict[str, Any]]:
    """Each router: answers ``/healthz``, accepts the node token, lists this node or not."""
    token = read_token(cfg.router.node_token, cfg.router.node_token_file, "router.node_token")
    routers = []
    for url in cfg.router.urls:
        client = RouterClient(url, node_id or "-", token, timeout_s=cfg.router.timeout_s)
        entry: dict[str, Any] = {"url": url, "healthz": client.healthz()}
        if entry["healthz"] != 200:
            found.problems.append(
                f"router {url}: /healthz answered {entry['healthz'] or 'nothing'}"
            )
        else:
            try:
                node = _find_node(client.nodes(), node_id or "")
                entry["auth"] = "ok"
                entry["node"] = node
            except RouterError as exc:
                entry["auth"] = "refused" if exc.status == 401 else f"error: {exc}"
                found.problems.append(f"router {url}: {exc}")
        routers.append(entry)
    return routers


def render(doc: dict[str, Any], stream: TextIO) -> None:
    def line(what: str, ok: bool | None, text: str) -> None:
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[ok]
        stream.write(f"{what:<9} {mark} {text}\n")

    cfg_path = doc["config"]["path"] or "(defaults + environment)"
    line("config", True, f"valid: {cfg_path}")
    imds = doc["imds"]
    if imds["ok"]:
        line(
            "imds",
            True,
            f"{imds['instance_id']} {imds['instance_type'] or '?'}"
            f" {imds['availability_zone'] or '?'} {imds['lifecycle'] or '?'}"
            f" local-ipv4={imds['local_ipv4'] or '?'}",
        )
    else:
        line("imds", False, imds["error"])
    for event in doc["events"]:
        line("event", False, json.dumps(event, default=str))
    if not doc["events"] and imds["ok"]:
        line("events", True, "none pending")
    eng = doc["engine"]
    load = eng["load"] or {}
    line(
        "engine",
        bool(eng["healthy"] and eng["serves"]),
        f"{eng['url']} healthy={eng['healthy']} (GET {eng['health_path']})"
        f" kind={eng['kind']} version={eng['version'] or '?'}"
        f" capabilities={','.join(eng['capabilities']) or 'none'} models={eng['models']}"
        f" running={load.get('running', '?')} waiting={load.get('waiting', '?')}"
        f" kv={load.get('kv_cache_usage', '?')} pid={eng['process']['pid']}",
    )
    drain = doc["drain"]
    if drain:
        line(
            "drain",
            False,
            f"{', '.join(drain['reasons'])} started {iso(drain['started_at'])}"
            f" finished={iso(drain['finished_at']) or 'no'}",
        )
    else:
        line("drain", True, "none recorded")
    if "lifecycle" in doc:
        lc = doc["lifecycle"]
        line(
            "lifecycle",
            None if "error" in lc else all(lc.values()),
            json.dumps(lc, default=str),
        )
    for r in doc["routers"]:
        node = r.get("node")
        seen = (
            f"node state={node.get('state')}" if isinstance(node, dict) else "node not registered"
        )
        ok = r["healthz"] == 200 and r.get("auth") == "ok"
        line("router", ok, f"{r['url']} healthz={r['healthz']} auth={r.get('auth', '-')} {seen}")
    for w in doc["warnings"]:
        line("warning", None, w)
    stream.write(("READY" if doc["ready"] else "NOT READY: " + "; ".join(doc["problems"])) + "\n")


def run_check(
    cfg: AgentConfig, config_path: str | None, *, as_json: bool = False, stream: TextIO = sys.stdout
) -> int:
    doc = gather(cfg, config_path)
    if as_json:
        json.dump(doc, stream, indent=2, default=str)
        stream.write("\n")
    else:
        render(doc, stream)
    return 0 if doc["ready"] else 1
