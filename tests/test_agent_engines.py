"""The agent next to engines other than vLLM: health fallback, detection, capabilities.

The engines are ``spotrelay sim vllm`` processes: with ``--api vllm`` they
answer like vLLM (``/health``, ``/version``, ``/metrics``); with ``--api
openai`` only the OpenAI API and ``/v1/models``, like llama-cpp-python's
server. The real llama.cpp engine is covered by ``test_real_engine.py``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from spotrelay.agent.detect import EngineDetector, Probed, capabilities_for, classify
from spotrelay.agent.engine import EngineProbe
from spotrelay.agent.settings import AgentConfig
from spotrelay.core.config import ConfigError, load
from spotrelay.core.protocol import CAP_CONTINUE_FINAL_MESSAGE, CAP_ECHO
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup, spotrelay_argv

from .support import (
    ROUTER_TOKEN,
    Service,
    post_json,
    register_node,
    router_nodes,
    start_agent,
    start_imds,
    start_router,
    start_sim_vllm,
)

pytestmark = pytest.mark.timeout(120)

VLLM_CAPS = {CAP_CONTINUE_FINAL_MESSAGE, CAP_ECHO}
# /v1/models and the OpenAPI info of llama-cpp-python's server, as it answers them.
LLAMA_CPP_PYTHON_MODELS = {
    "object": "list",
    "data": [{"id": "smollm2", "object": "model", "owned_by": "me", "permissions": []}],
}
LLAMA_CPP_PYTHON_OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "🦙 llama.cpp Python API", "version": "0.3.36"},
}


def _models(owner: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": owner}]}


def _openai_engine(procs: ProcessGroup, logdir: Path, name: str = "openai") -> Service:
    """A simulator without /health, /version or /metrics (like llama-cpp-python's server)."""
    return start_sim_vllm(procs, logdir, model="m-openai", name=name, api="openai")


@pytest.mark.parametrize(
    ("probed", "kind", "version"),
    [
        (Probed(_models("vllm"), {"version": "0.11.0"}), "vllm", "0.11.0"),
        (Probed(_models("x"), {"version": "0.6.3"}), "vllm", "0.6.3"),  # /version alone
        (Probed(_models("sglang")), "sglang", ""),
        (Probed(_models("llamacpp")), "llama.cpp", ""),  # llama.cpp's llama-server
        (Probed(LLAMA_CPP_PYTHON_MODELS, None, LLAMA_CPP_PYTHON_OPENAPI), "llama.cpp", "0.3.36"),
        (Probed(LLAMA_CPP_PYTHON_MODELS), "openai", ""),
        (Probed(None, None, None), "unknown", ""),
        (Probed(_models("me"), {"version": 3}), "openai", ""),  # not vLLM's shape
    ],
)
def test_classify_engine_documents(probed: Probed, kind: str, version: str) -> None:
    got_kind, got_version, evidence = classify(probed)
    assert (got_kind, got_version) == (kind, version)
    assert evidence


def test_capabilities_follow_the_kind_unless_configured() -> None:
    assert capabilities_for("vllm", None) == VLLM_CAPS
    for kind in ("llama.cpp", "sglang", "openai", "unknown"):
        assert capabilities_for(kind, None) == frozenset()
    assert capabilities_for("llama.cpp", ["echo"]) == {"echo"}
    assert capabilities_for("vllm", []) == frozenset()  # configured: none at all


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SPOTRELAY_ENGINE_HEALTH_PATH": "health"}, "engine.health_path"),
        ({"SPOTRELAY_ENGINE_KIND": "v llm"}, "engine.kind"),
        ({"SPOTRELAY_ENGINE_CAPABILITIES": "echo,bad cap"}, "engine.capabilities[1]"),
    ],
)
def test_bad_engine_keys_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(AgentConfig, None, env=env)
    assert str(info.value).startswith(key)


def test_engine_keys_from_the_environment() -> None:
    cfg = load(
        AgentConfig,
        None,
        env={
            "SPOTRELAY_ENGINE_HEALTH_PATH": "/ready",
            "SPOTRELAY_ENGINE_KIND": "inhouse",
            "SPOTRELAY_ENGINE_CAPABILITIES": "continue_final_message",
        },
    )
    assert cfg.engine.health_path == "/ready"
    assert cfg.engine.kind == "inhouse"
    assert cfg.engine.capabilities == ["continue_final_message"]
    assert load(AgentConfig, None, env={}).engine.capabilities is None


def test_vllm_like_engine_is_detected_with_chat_resume(procs: ProcessGroup, logdir: Path) -> None:
    engine = start_sim_vllm(procs, logdir)
    probe = EngineProbe(engine.url)
    status = probe.probe()
    assert status.healthy and status.models == ["sim-model"] and status.load is not None
    assert not probe.health_fallback
    info = EngineDetector(probe).observe(status.healthy)
    assert info.kind == "vllm" and info.version == "0.0.0+spotrelay.sim"
    assert info.capabilities == VLLM_CAPS


def test_engine_without_health_falls_back_to_models_once(
    procs: ProcessGroup, logdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _openai_engine(procs, logdir)
    probe = EngineProbe(engine.url)
    detector = EngineDetector(probe)
    assert detector.current().kind == "unknown"  # before the engine ever answered
    with caplog.at_level(logging.INFO, logger="spotrelay.agent.engine"):
        for _ in range(3):
            status = probe.probe()
            assert status.healthy, status.error
            assert status.models == ["m-openai"] and status.load is None
            info = detector.observe(status.healthy)
        assert probe.health_fallback
    fallback = [r for r in caplog.records if "404 on /health" in r.getMessage()]
    assert len(fallback) == 1  # logged once, not per probe
    detected = [r for r in caplog.records if "engine detected" in r.getMessage()]
    assert len(detected) == 1 and "kind=openai" in detected[0].getMessage()
    assert any("continue_final_message" in r.getMessage() for r in caplog.records)
    assert any("no readable /metrics" in r.getMessage() for r in caplog.records)
    assert info.kind == "openai" and info.capabilities == frozenset()


def test_configured_kind_and_capabilities_win(procs: ProcessGroup, logdir: Path) -> None:
    engine = _openai_engine(procs, logdir)
    probe = EngineProbe(engine.url)
    detector = EngineDetector(probe, kind="inhouse", capabilities=["continue_final_message"])
    assert detector.current().capabilities == {"continue_final_message"}  # before it answers
    info = detector.observe(probe.probe().healthy)
    assert (info.kind, info.version) == ("inhouse", "")
    assert info.capabilities == {"continue_final_message"}


def test_only_a_404_switches_to_the_models_check(procs: ProcessGroup, logdir: Path) -> None:
    engine = start_sim_vllm(procs, logdir)
    probe = EngineProbe(engine.url, health_path="/ready")  # the sim answers 404 there
    assert probe.probe().healthy and probe.health_fallback
    post_json(f"{engine.url}/_control/faults", {"unhealthy_for_s": 30})
    status = EngineProbe(engine.url).probe()
    assert not status.healthy and status.error == "/health answered 503"


# ----------------------------------------------------------- agent end to end


def test_agent_reports_engines_and_drains_without_metrics(
    procs: ProcessGroup, logdir: Path
) -> None:
    router = start_router(procs, logdir)
    vllm = start_sim_vllm(procs, logdir, model="m-openai", name="vllm")
    plain = _openai_engine(procs, logdir)
    agents = {}
    for node_id, engine, instance in (
        ("n-vllm", vllm, "i-0aaaaaaaaaaaaaaa1"),
        ("n-plain", plain, "i-0aaaaaaaaaaaaaaa2"),
    ):
        imds = start_imds(procs, logdir, "--instance-id", instance, name=f"imds-{node_id}")
        config = {
            "node": {"id": node_id, "advertise_url": engine.url},
            "router": {"urls": [router.control_url], "node_token": ROUTER_TOKEN},
            "engine": {
                "url": engine.url,
                "model": "m-openai",
                "process_name": None,
                "systemd_unit": None,
            },
            "imds": {"url": imds.url, "poll_interval_s": 0.25},
            "heartbeat": {"interval_s": 0.5},
            "drain": {"safety_margin_s": 1, "ack_timeout_s": 2},
            "state_dir": str(logdir / f"state-{node_id}"),
        }
        start_agent(procs, logdir, config, name=f"agent-{node_id}")
        agents[node_id] = imds

    def both_ready() -> bool:
        nodes = router_nodes(router.control_url)
        return all(nodes.get(n, {}).get("state") == "ready" for n in agents)

    wait_until(both_ready, timeout=20, what="both nodes ready")
    nodes = router_nodes(router.control_url)
    assert nodes["n-vllm"]["engine"] == {
        "kind": "vllm",
        "version": "0.0.0+spotrelay.sim",
        "capabilities": sorted(VLLM_CAPS),
    }
    assert nodes["n-plain"]["engine"] == {"kind": "openai", "version": "", "capabilities": []}

    # `spotrelay agent check` says what it found, in one line.
    argv = spotrelay_argv("agent", "check", "--config", str(logdir / "agent-n-plain.yaml"))
    check = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    engine_line = next(line for line in check.stdout.splitlines() if line.startswith("engine"))
    assert "(GET /v1/models) kind=openai" in engine_line
    assert "capabilities=none" in engine_line

    # A spot notice on the node without /metrics: the drain must not wait for the
    # deadline (its engine never reports idle); the routers' in-flight count decides.
    imds = agents["n-plain"]
    t0 = time.monotonic()
    post_json(f"{imds.url}/_control/spot", {"action": "terminate", "lead_s": 25})
    wait_until(
        lambda: "n-plain" not in router_nodes(router.control_url),
        timeout=15,
        what="n-plain drained and deregistered",
    )
    assert time.monotonic() - t0 < 12, "the drain waited for the deadline"
    log = (logdir / "agent-n-plain.log").read_text()
    assert log.count("404 on /health") == 1
    assert "kind=openai" in log and "no readable /metrics" in log
    assert "drain deadline reached" not in log


def test_router_restores_an_ejected_engine_without_health(
    procs: ProcessGroup, logdir: Path
) -> None:
    """The router's active probe follows the agent's rule: /health 404 -> /v1/models."""
    engine = _openai_engine(procs, logdir)
    router = start_router(
        procs,
        logdir,
        {
            "retry": {"max_attempts": 1},
            "health": {
                "consecutive_failures": 1,
                "base_ejection_s": 0.5,
                "max_ejection_s": 1,
                "probe_interval_s": 0.2,
            },
        },
    )
    register_node(router.control_url, ROUTER_TOKEN, "plain", engine.url, "m-openai")
    post_json(f"{engine.url}/_control/faults", {"error_status": 503, "error_count": 1})
    body = {"model": "m-openai", "prompt": "hi", "max_tokens": 2}
    with pytest.raises(urllib.error.HTTPError):
        _post(f"{router.url}/v1/completions", body)
    assert router_nodes(router.control_url)["plain"]["ejection"]["count"] == 1
    wait_until(
        lambda: router_nodes(router.control_url)["plain"]["state"] == "ready",
        timeout=10,
        what="the ejected node restored by the /v1/models probe",
    )
    assert _post(f"{router.url}/v1/completions", body)["choices"][0]["text"]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())
