"""A stand-in engine for the router's throughput runs: HAProxy replaying the simulator's answers.

Why: on the 2-core box the engine shares the cores with the router under
test. Reached through a router, ``spotrelay sim vllm`` spent about 200 µs of
CPU per non-streaming request (0.52 of a core at 2,500 req/s, measured with
psutil) — half of what the router itself spends — so a second router worker
found no free core to run on and the worker-scaling figure measured the
simulator as much as the router. In production the engine is on a GPU host,
not the router's. HAProxy answering from memory costs about 20 µs per request
(0.06 of a core at 2,500 req/s), which leaves the router the cores a router
host would give it.

The answers are the simulator's own bytes, recorded once per run, so the
router parses and relays exactly what it would from the simulator (same body,
same ``finish_reason``); only the HTTP framing (HAProxy's headers) differs.
Streams need per-token timing and stay on the simulator.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

# (path the answer is served on, request that records it from the simulator)
RECORDED = {
    "/v1/completions": {"prompt": "hi", "max_tokens": 1},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    "/v1/models": None,
}


def record_answers(engine_url: str, model: str, into: Path) -> dict[str, Path]:
    """Ask the simulator once per path in :data:`RECORDED`; one file per answer body."""
    into.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for path, body in RECORDED.items():
        data = json.dumps({"model": model, **body}).encode() if body is not None else None
        req = urllib.request.Request(
            engine_url + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = resp.read()
        json.loads(answer)  # a recorded error page would make every run meaningless
        files[path] = into / (path.strip("/").replace("/", "-") + ".json")
        files[path].write_bytes(answer)
    return files


# One thread, keep-alive on both sides: the settings every HAProxy of the benchmark shares.
HAPROXY_HEAD = """
global
    maxconn 8000
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 600s
    timeout server 600s
    option http-keep-alive
    option http-no-delay
    http-reuse always"""


def haproxy_config(host: str, port: int, answers: dict[str, Path]) -> str:
    """One thread answering from memory: each recorded body on its path, 200 on /health."""
    rules = "\n".join(
        f"    http-request return status 200 content-type application/json file {file} "
        f"if {{ path {path} }}"
        for path, file in answers.items()
    )
    return f"""{HAPROXY_HEAD}
frontend static-engine
    bind {host}:{port}
{rules}
    http-request return status 200 if {{ path /health }}
    http-request return status 404 content-type application/json string '{{"error": "none"}}'
"""
