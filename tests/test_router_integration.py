"""The router as a real process (gunicorn, gevent) in front of real ``spotrelay sim vllm`` nodes.

Everything runs on 127.0.0.1 with short TTLs and timeouts from config, and
synchronises by polling with deadlines.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import openai
import pytest
import requests

from spotrelay.sim.loopback import free_port, wait_until
from tests.support import (
    ROUTER_TOKEN,
    metric,
    register_node,
    router_nodes,
    running,
    start_router,
    start_sim_vllm,
)
from tests.support.sse import sse_data

MODEL = "sim-model"
AUTH = {"Authorization": f"Bearer {ROUTER_TOKEN}"}


# -- helpers ---------------------------------------------------------------------------------


def nodes(router) -> dict[str, dict]:
    return router_nodes(router.control_url)


def register(router, node_id, sim_or_url, model=MODEL, **fields):
    url = sim_or_url if isinstance(sim_or_url, str) else sim_or_url.url
    return register_node(router.control_url, ROUTER_TOKEN, node_id, url, model, **fields)


def complete(router, max_tokens=8, stream=False, timeout=30, headers=None, **extra):
    body = {"model": MODEL, "prompt": "The spot fleet", "max_tokens": max_tokens, **extra}
    if stream:
        body["stream"] = True
    return requests.post(
        f"{router.url}/v1/completions", json=body, timeout=timeout, stream=stream, headers=headers
    )


def sim_request_ids(sim) -> list[str]:
    stats = requests.get(f"{sim.url}/_control/stats", timeout=5).json()
    return [r["request_id"] for r in stats["recent"] + stats["active_requests"]]


def set_faults(sim, **faults):
    requests.post(f"{sim.url}/_control/faults", json=faults, timeout=5).raise_for_status()


# -- the official client -------------------------------------------------------------------------


def test_openai_client_through_the_router(procs, logdir):
    sims = [start_sim_vllm(procs, logdir, name=f"vllm{i}") for i in range(2)]
    router = start_router(procs, logdir, {"auth": {"api_keys": ["client-key"]}})
    for i, sim in enumerate(sims):
        register(router, f"n{i}", sim)
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="client-key", max_retries=0)
    direct = openai.OpenAI(base_url=f"{sims[0].url}/v1", api_key="x", max_retries=0)

    assert [m.id for m in client.models.list()] == [MODEL]

    kwargs = {"model": MODEL, "prompt": "Spot capacity is", "max_tokens": 12}
    via_router = client.completions.create(
        **kwargs, extra_headers={"X-Request-ID": "trace-completion-1"}
    )
    assert via_router.choices[0].text == direct.completions.create(**kwargs).choices[0].text
    assert via_router.usage.completion_tokens == 12

    messages = [{"role": "user", "content": "Say something about preemption."}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    expected = direct.chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    assert chat.choices[0].message.content == expected.choices[0].message.content

    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for event in stream:
        if event.choices and event.choices[0].delta.content:
            pieces.append(event.choices[0].delta.content)
        usage = event.usage or usage
    assert "".join(pieces) == expected.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 10

    text_stream = client.completions.create(**kwargs, stream=True)
    assert "".join(c.choices[0].text for c in text_stream if c.choices) == (
        via_router.choices[0].text
    )

    # The request id reached the engine and the router's log line about the request.
    seen = [rid for sim in sims for rid in sim_request_ids(sim)]
    assert "trace-completion-1" in seen
    wait_until(
        lambda: "request_id=trace-completion-1" in router.proc.tail(200),
        timeout=5,
        what="the access log line",
    )

    bad = openai.OpenAI(base_url=f"{router.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(**kwargs)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)


# -- failover ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    stream: bool
    ok: bool
    started: bool  # a stream that delivered content before failing
    detail: str = ""


def run_one(router_url: str, stream: bool, max_tokens: int) -> Outcome:
    body = {"model": MODEL, "prompt": "Failover test", "max_tokens": max_tokens, "stream": stream}
    started = False
    try:
        resp = requests.post(f"{router_url}/v1/completions", json=body, timeout=60, stream=stream)
        if resp.status_code != 200:
            return Outcome(stream, False, False, f"status {resp.status_code}: {resp.text[:200]}")
        if not stream:
            doc = resp.json()
            ok = len(doc["choices"][0]["text"]) > 0
            return Outcome(stream, ok, False, "" if ok else "empty text")
        done = False
        for data in sse_data(resp):
            if data == "[DONE]":
                done = True
                break
            doc = json.loads(data)
            if "error" in doc:
                return Outcome(stream, False, started, doc["error"]["message"])
            if doc["choices"] and doc["choices"][0].get("text"):
                started = True
        return Outcome(stream, done, started, "" if done else "no [DONE]")
    except Exception as exc:  # any client-visible failure counts
        return Outcome(stream, False, started, repr(exc))


def test_sigkill_of_a_node_under_load_fails_no_request_that_had_not_started(procs, logdir):
    sims = [
        start_sim_vllm(procs, logdir, "--itl-ms", "20", "--ttft-ms", "50", name=f"vllm{i}")
        for i in range(3)
    ]
    router = start_router(
        procs,
        logdir,
        {
            "server": {"access_log": False},
            "timeouts": {"connect_s": 1},
            "health": {"base_ejection_s": 60, "probe_interval_s": 0.5},
        },
    )
    for i, sim in enumerate(sims):
        register(router, f"n{i}", sim)
    victim = sims[1]
    total = 200
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        time.sleep(i * 0.006)  # arrivals spread over 1.2 s; each request lasts ~1 s
        outcome = run_one(router.url, stream=i % 2 == 0, max_tokens=50)
        with lock:
            outcomes.append(outcome)

    with ThreadPoolExecutor(max_workers=total) as pool:
        futures = [pool.submit(job, i) for i in range(total)]
        wait_until(lambda: running(victim) >= 25, timeout=10, what="load on the victim")
        in_flight_on_victim = nodes(router)["n1"]["in_flight"]
        victim.proc.kill()
        for f in futures:
            f.result()

    assert len(outcomes) == total
    assert in_flight_on_victim >= 20, "the victim had requests in flight when it died"
    failed = [o for o in outcomes if not o.ok]
    not_started = [o for o in failed if not o.stream or not o.started]
    assert not_started == [], not_started[:5]
    # Streams that had already delivered text may end with the SSE error event
    # (unless stream resume continued them); they must end cleanly, not hang.
    assert all(o.detail for o in failed)
    retries = metric(router.control_url, "spotrelay_router_retries_total")
    assert retries >= 1
    assert nodes(router)["n1"]["state"] == "ejected"


def test_faulty_nodes_are_avoided_ejected_and_restored(procs, logdir):
    good = start_sim_vllm(procs, logdir, name="good")
    busy = start_sim_vllm(procs, logdir, "--error-status", "503", name="busy")
    hung = start_sim_vllm(procs, logdir, "--hang", name="hung")
    dead_port = free_port()
    router = start_router(
        procs,
        logdir,
        {
            "retry": {"max_attempts": 4, "backoff_base_ms": 5, "backoff_max_ms": 20},
            "timeouts": {"connect_s": 0.5, "first_byte_s": 1},
            # p2c spreads one repeated prompt over every node, so each faulty one is tried;
            # cache_aware would send it to one node (tests/test_placement.py).
            "routing": {"policy": "p2c"},
            "health": {
                "consecutive_failures": 2,
                "base_ejection_s": 1.5,
                "max_ejection_s": 3,
                "probe_interval_s": 0.2,
            },
        },
    )
    register(router, "good", good)
    register(router, "busy", busy)
    register(router, "hung", hung)
    register(router, "dead", f"http://127.0.0.1:{dead_port}")

    def send(n: int) -> list[requests.Response]:
        with ThreadPoolExecutor(max_workers=6) as pool:
            return list(pool.map(lambda _: complete(router, max_tokens=4), range(n)))

    answers = send(24)
    assert [r.status_code for r in answers] == [200] * 24
    assert {r.headers["X-Spotrelay-Node"] for r in answers} == {"good"}
    state = nodes(router)
    for bad in ("busy", "hung", "dead"):
        assert state[bad]["ejection"]["count"] >= 1, (bad, state[bad])
    assert state["good"]["ejection"]["count"] == 0
    assert metric(router.control_url, "spotrelay_router_ejections_total") >= 3
    assert metric(router.control_url, "spotrelay_router_retries_total", reason="status_503") >= 1
    assert metric(router.control_url, "spotrelay_router_retries_total", reason="connect_error") >= 1
    assert (
        metric(router.control_url, "spotrelay_router_retries_total", reason="first_byte_timeout")
        >= 1
    )

    # Heal every node: they come back through the active /health probe.
    requests.post(f"{busy.url}/_control/reset", timeout=5).raise_for_status()
    requests.post(f"{hung.url}/_control/reset", timeout=5).raise_for_status()
    start_sim_vllm(procs, logdir, name="revived", port=dead_port)
    wait_until(
        lambda: all(n["state"] == "ready" for n in nodes(router).values()),
        timeout=15,
        what="all nodes restored",
    )
    served = {r.headers["X-Spotrelay-Node"] for r in send(40) if r.status_code == 200}
    assert served == {"good", "busy", "hung", "dead"}


def test_drain_stops_new_requests_while_open_ones_finish(procs, logdir):
    slow = start_sim_vllm(procs, logdir, "--itl-ms", "40", name="slow")
    other = start_sim_vllm(procs, logdir, name="other")
    router = start_router(procs, logdir, {})
    register(router, "slow", slow)
    results: list[list[str]] = []

    def stream_one() -> None:
        with complete(router, max_tokens=40, stream=True) as resp:
            results.append(sse_data(resp))

    threads = [threading.Thread(target=stream_one) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: nodes(router)["slow"]["in_flight"] == 3, timeout=10, what="3 streams")
    register(router, "other", other)
    drained = requests.post(f"{router.control_url}/nodes/slow/drain", headers=AUTH, timeout=5)
    assert drained.status_code == 200 and drained.json()["in_flight"] == 3
    for _ in range(8):
        resp = complete(router, max_tokens=2)
        assert resp.status_code == 200 and resp.headers["X-Spotrelay-Node"] == "other"
    # A heartbeat saying "ready" does not undo an operator's drain.
    register(router, "slow", slow)
    assert nodes(router)["slow"]["state"] == "draining"
    for t in threads:
        t.join(30)
    assert len(results) == 3
    for events in results:
        assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    assert nodes(router)["slow"]["in_flight"] == 0


def test_silent_node_expires_then_requests_wait_for_capacity_then_503(procs, logdir):
    sim = start_sim_vllm(procs, logdir)
    router = start_router(
        procs, logdir, {"registry": {"ttl_s": 1}, "routing": {"no_capacity_wait_s": 1.5}}
    )
    register(router, "a", sim)
    assert complete(router).status_code == 200
    assert requests.get(f"{router.url}/readyz", timeout=5).status_code == 200
    wait_until(lambda: nodes(router) == {}, timeout=10, what="the silent node to expire")
    assert requests.get(f"{router.url}/readyz", timeout=5).status_code == 503

    started = time.monotonic()
    resp = complete(router)
    waited = time.monotonic() - started
    assert resp.status_code == 503 and 1.3 <= waited < 5
    assert resp.headers["Retry-After"] == "5"
    assert resp.json()["error"]["code"] == "no_capacity"

    # A node that registers during the wait serves the waiting request.
    threading.Timer(0.5, lambda: register(router, "a", sim)).start()
    started = time.monotonic()
    resp = complete(router)
    assert resp.status_code == 200 and 0.3 <= time.monotonic() - started < 1.5


# -- the client goes away --------------------------------------------------------------------


def test_client_disconnect_aborts_the_engine_request(procs, logdir):
    sim = start_sim_vllm(procs, logdir, "--itl-ms", "50")
    router = start_router(procs, logdir, {})
    register(router, "a", sim)
    resp = complete(router, max_tokens=400, stream=True)  # 20 s of tokens
    lines = resp.iter_lines()
    for _ in range(3):
        next(lines)
    assert running(sim) == 1
    resp.close()
    wait_until(lambda: running(sim) == 0, timeout=5, what="the engine to abort")
    wait_until(
        lambda: metric(router.control_url, "spotrelay_router_client_disconnects_total") == 1,
        timeout=5,
        what="the disconnect to be counted",
    )
    assert nodes(router)["a"]["in_flight"] == 0


# -- control plane and hostile input ---------------------------------------------------------


def raw_request(base_url, method, path, body=b"", headers=None, chunks=None):
    """An HTTP exchange with full control over framing; returns (status, body)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        if chunks is None:
            conn.request(method, path, body=body, headers=headers or {})
        else:
            conn.putrequest(method, path)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for chunk in chunks:
                    conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                conn.send(b"0\r\n\r\n")
            except OSError:
                pass  # the server may answer (413) and close before we finish
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_control_plane_auth_ssrf_and_hostile_bodies(procs, logdir):
    router = start_router(
        procs,
        logdir,
        {
            "registry": {"allowed_networks": ["10.0.0.0/8"]},
            "routing": {"max_body_bytes": 4096},
        },
    )
    base = router.control_url
    bad_auth = [{}, {"Authorization": "Bearer nope"}, {"Authorization": ROUTER_TOKEN}]
    node_body = json.dumps({"url": "http://10.1.2.3:8000", "models": [MODEL]}).encode()
    for headers in bad_auth:
        for method, path, body in [
            ("GET", "/nodes", b""),
            ("PUT", "/nodes/x", node_body),
            ("POST", "/nodes/x/drain", b""),
            ("DELETE", "/nodes/x", b""),
        ]:
            status, answer = raw_request(base, method, path, body, headers)
            assert status == 401, (method, path, headers)
            assert "error" in json.loads(answer)

    for url in [
        "http://169.254.169.254",
        "http://169.254.169.254:80/latest/meta-data",
        "http://8.8.8.8:8000",
        "file:///etc/passwd",
        "http://localhost:8000",  # resolves to 127.0.0.1: outside the allowed 10.0.0.0/8
        "http://[fe80::1]:8000",
    ]:
        with pytest.raises(RuntimeError, match="400"):
            register(router, "evil", url)
    assert nodes(router) == {}
    register(router, "ok", "http://10.1.2.3:8000")  # never contacted: requests below are 4xx

    big = json.dumps({"model": MODEL, "prompt": "x" * 5000}).encode()
    json_ct = {"Content-Type": "application/json"}
    cases = [
        ("POST", "/v1/completions", big, json_ct, None, 413),
        ("POST", "/v1/completions", b"", json_ct, [big[:3000], big[3000:]], 413),
        ("POST", "/v1/completions", b"{not json", json_ct, None, 400),
        ("POST", "/v1/completions", b"", json_ct, None, 400),
        ("POST", "/v1/completions", b"\x00\xff\xfe garbage", {}, None, 400),
        ("POST", "/v1/chat/completions", b'{"model": "", "messages": []}', json_ct, None, 400),
        ("POST", "/v1/chat/completions", b'{"model": ["x"]}', json_ct, None, 400),
        ("POST", "/v1/completions", b'"just a string"', json_ct, None, 400),
        ("POST", "/v1/completions", b'{"model": "unknown-model"}', json_ct, None, 404),
        ("POST", "/v1/embeddings", b"[" * 2000 + b"]" * 2000, json_ct, None, 400),
        ("GET", "/v1/completions", b"", {}, None, 405),
        ("BREW", "/v1/completions", b"", {}, None, 405),
        ("POST", "/v1/nothing", b"{}", json_ct, None, 404),
        ("GET", "/../../etc/passwd", b"", {}, None, 404),
        ("POST", "/nodes/ok", b"{}", AUTH, None, 405),
        ("PUT", "/nodes/ok", b"{broken", AUTH, None, 400),
        ("PUT", "/nodes/ok", b"x" * 70_000, AUTH, None, 413),
    ]
    for method, path, body, headers, chunks, expected in cases:
        listener = base if path.startswith("/nodes") else router.url  # control / data plane
        status, answer = raw_request(listener, method, path, body, headers, chunks)
        assert status == expected, (method, path, body[:40], status, answer[:200])
        if path.startswith("/v1/"):
            assert set(json.loads(answer)["error"]) >= {"message", "type", "code"}
    # Oversized headers are refused by gunicorn itself, still with a 4xx.
    status, _ = raw_request(base, "GET", "/healthz", headers={"X-Big": "y" * 20_000})
    assert 400 <= status < 500
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
