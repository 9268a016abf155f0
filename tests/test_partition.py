"""A network partition that really drops packets: the stream moves on, the client sees nothing.

Each node (simulator engine, IMDS emulator and agent) runs in its own network
namespace joined to the root namespace by a veth pair; the router runs in the
root namespace (tests/support/netns.py). Mid-stream the serving node's link is taken
down: no FIN, no RST, its packets vanish and its heartbeats stop. The stream
must complete on the other node with exactly the text an undisturbed engine
gives. Needs root and ``ip`` (iproute2): CI has both; elsewhere the test skips.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from spotrelay.sim.loopback import free_port, http_ok, wait_until
from spotrelay.sim.processes import ManagedProcess, ProcessGroup, spotrelay_argv
from spotrelay.sim.traffic import expected_text

from .support import ROUTER_TOKEN, router_nodes
from .support.netns import Lab, NetnsUnavailable, NsNode

pytestmark = pytest.mark.timeout(120)

MODEL = "sim-model"
PROMPT = "Tell a long story about a partition"
MAX_TOKENS = 60  # 3 s at 50 ms a token


def start_node(procs: ProcessGroup, logdir: Path, node: NsNode, router_url: str, i: int) -> str:
    """Engine, IMDS emulator and agent inside ``node``'s namespace; the engine's URL."""
    engine_port, imds_port = free_port(), free_port()
    engine_url = f"http://{node.ns_ip}:{engine_port}"
    # 0.0.0.0 inside a namespace is its own interfaces only: lo and its end of the link.
    procs.start(
        ManagedProcess(
            f"engine-{i}",
            node.argv(*spotrelay_argv(
                "sim", "vllm", "--host", "0.0.0.0", "--port", str(engine_port), "--model", MODEL,
                "--ttft-ms", "50", "--itl-ms", "50",
            )),
            log_path=logdir / f"engine-{i}.log",
        )
    ).wait_ready(lambda: http_ok(engine_url + "/health"))  # fmt: skip
    procs.start(
        ManagedProcess(
            f"imds-{i}",
            node.argv(*spotrelay_argv(
                "sim", "imds", "--host", "0.0.0.0", "--port", str(imds_port),
                "--instance-id", f"i-0a0{i:013d}",
            )),
            log_path=logdir / f"imds-{i}.log",
        )
    ).wait_ready(lambda: http_ok(f"http://{node.ns_ip}:{imds_port}/_control/health"))  # fmt: skip
    config = {
        "node": {"id": f"part-{i}", "advertise_url": engine_url},
        "router": {"urls": [router_url], "node_token": ROUTER_TOKEN, "node_token_file": None},
        "engine": {"url": f"http://127.0.0.1:{engine_port}", "model": MODEL,
                   "process_name": None, "systemd_unit": None},
        "imds": {"url": f"http://127.0.0.1:{imds_port}"},
        "metrics": {"port": 0},
        "state_dir": str(logdir / f"state-{i}"),
    }  # fmt: skip
    path = logdir / f"agent-{i}.yaml"
    path.write_text(yaml.safe_dump(config))
    procs.start(
        ManagedProcess(
            f"agent-{i}",
            node.argv(*spotrelay_argv("agent", "--config", str(path))),
            log_path=logdir / f"agent-{i}.log",
        )
    )
    return engine_url


def start_router(procs: ProcessGroup, logdir: Path, host: str) -> tuple[str, str]:
    """The router, product defaults, on the lab's router address in the root namespace.

    Its data URL and its control URL (agents heartbeat the control listener).
    """
    port, control_port = free_port(), free_port()
    config = {
        "server": {"host": host, "port": port, "control_port": control_port,
                   "graceful_timeout_s": 1},
        "auth": {"node_token": ROUTER_TOKEN},
    }  # fmt: skip
    path = logdir / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://{host}:{port}"
    procs.start(
        ManagedProcess(
            "router",
            spotrelay_argv("router", "--config", str(path)),
            log_path=logdir / "router.log",
        )
    ).wait_ready(lambda: http_ok(url + "/healthz"))
    return url, f"http://{host}:{control_port}"


def running(engine_url: str) -> int:
    try:
        with urllib.request.urlopen(engine_url + "/_control/stats", timeout=1) as resp:
            return int(json.load(resp)["engine"]["running"])
    except OSError:
        return 0


def served(engine_url: str) -> int:
    with urllib.request.urlopen(engine_url + "/_control/stats", timeout=2) as resp:
        return int(json.load(resp)["engine"]["generation_tokens_total"])


def test_stream_survives_its_node_being_cut_off(procs: ProcessGroup, logdir: Path) -> None:
    try:
        lab = Lab().__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(f"network partition test: {exc}")
    try:
        nodes = [lab.add_node(), lab.add_node()]
        router, control = start_router(procs, logdir, lab.router_ip)
        engines = [start_node(procs, logdir, node, control, i) for i, node in enumerate(nodes)]
        wait_until(
            lambda: all(
                router_nodes(control).get(f"part-{i}", {}).get("state") == "ready" for i in (0, 1)
            ),
            timeout=30,
            what="both nodes ready at the router",
        )
        client = openai.OpenAI(base_url=router + "/v1", api_key="x", max_retries=0, timeout=20)
        chunks: list[str] = []
        result: dict[str, Any] = {}

        def stream() -> None:
            try:
                finish = None
                for chunk in client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": PROMPT}],
                    max_tokens=MAX_TOKENS,
                    stream=True,
                ):
                    if chunk.choices:
                        chunks.append(chunk.choices[0].delta.content or "")
                        finish = chunk.choices[0].finish_reason or finish
                result["finish"] = finish
            except Exception as exc:  # what the client would see
                result["error"] = f"{type(exc).__name__}: {exc}"

        t = threading.Thread(target=stream)
        t.start()
        wait_until(lambda: sum(1 for c in chunks if c) >= 10, timeout=15, what="stream under way")
        victim = next(i for i, url in enumerate(engines) if running(url))
        survivor = engines[1 - victim]
        before = served(survivor)
        nodes[victim].cut()  # packets dropped from here on: no FIN, no RST
        t.join(30)
        assert not t.is_alive(), "the stream never finished"
        assert "error" not in result, result["error"]
        assert result["finish"] == "length"
        assert "".join(chunks) == expected_text("chat", PROMPT, MAX_TOKENS)
        assert served(survivor) > before, "the rest of the stream came from the other node"
    finally:
        procs.stop_all(timeout=5)  # before the namespaces go
        lab.__exit__(None, None, None)
