"""Fault injection of ``spotrelay sim vllm``: by flag and by the control API, each
fault and its reset, as a router or agent will meet them.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from spotrelay.sim import textgen
from spotrelay.sim.loopback import http_status, wait_until
from spotrelay.sim.processes import ProcessGroup, spotrelay_argv
from tests.support import Service, start_service, start_sim_vllm
from tests.support.sse import sse_data

MODEL = "sim-model"
FAST = ("--ttft-ms", "5", "--itl-ms", "2")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    group = ProcessGroup()
    try:
        yield start_sim_vllm(group, tmp_path_factory.mktemp("sim-faults"), *FAST)
    finally:
        group.stop_all()


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sim" in request.fixturenames:
        requests.post(request.getfixturevalue("sim").url + "/_control/reset", timeout=5)


def faults(url: str, **spec: object) -> dict:
    r = requests.post(url + "/_control/faults", json=spec, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def raw_stream(url: str, path: str, body: dict) -> tuple[list[str], bool]:
    """POST a streaming request; returns (SSE data payloads, ended cleanly).

    ``http.client`` raises ``IncompleteRead`` when a chunked body is cut off:
    exactly what a router sees when an engine dies mid-stream.
    """
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    data = b""
    clean = True
    try:
        while chunk := resp.read1(65536):
            data += chunk
    except http.client.IncompleteRead as exc:
        data += exc.partial
        clean = False
    finally:
        conn.close()
    return sse_data(data), clean


def contents(events: list[str]) -> list[str]:
    out = []
    for e in events:
        if e == "[DONE]":
            continue
        choice = json.loads(e)["choices"][0]
        if choice.get("finish_reason") is None and "role" not in choice.get("delta", {}):
            out.append(choice["delta"].get("content") if "delta" in choice else choice["text"])
    return out


def test_drop_after_tokens_cuts_streams_exactly(sim: Service) -> None:
    state = faults(sim.url, drop_after_tokens=3)
    assert (state["drop_after_tokens"], state["drop_count"]) == (3, None)
    body = {"model": MODEL, "prompt": "drop me", "max_tokens": 10, "stream": True}
    for _ in range(2):  # every request until reset
        events, clean = raw_stream(sim.url, "/v1/completions", body)
        assert not clean
        assert "[DONE]" not in events
        assert contents(events) == textgen.generate("drop me", 3)
    # the openai SDK surfaces it as an error, never as a short "successful" stream
    c = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.APIConnectionError):
        list(c.completions.create(model=MODEL, prompt="x", max_tokens=10, stream=True))
    stats = requests.get(sim.url + "/_control/stats", timeout=5).json()
    assert [r["outcome"] for r in stats["recent"][-3:]] == ["dropped"] * 3
    requests.post(sim.url + "/_control/reset", timeout=5)
    events, clean = raw_stream(sim.url, "/v1/completions", body)
    assert clean and events[-1] == "[DONE]"


def test_drop_zero_chat_sends_only_the_role_chunk(sim: Service) -> None:
    faults(sim.url, drop_after_tokens=0, drop_count=1)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": True,
    }
    events, clean = raw_stream(sim.url, "/v1/chat/completions", body)
    assert not clean
    assert len(events) == 1
    assert json.loads(events[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # drop_count=1: the next request is served in full, and the fault is gone
    events, clean = raw_stream(sim.url, "/v1/chat/completions", body)
    assert clean and len(contents(events)) == 5
    assert requests.get(sim.url + "/_control/faults", timeout=5).json()["drop_after_tokens"] is None


def test_drop_closes_non_streaming_requests_without_a_response(sim: Service) -> None:
    faults(sim.url, drop_after_tokens=2)
    with pytest.raises(requests.ConnectionError):
        requests.post(
            sim.url + "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 5},
            timeout=10,
        )
    # other endpoints are unaffected
    assert requests.get(sim.url + "/v1/models", timeout=5).status_code == 200


def test_hang_accepts_and_never_answers_until_reset(sim: Service) -> None:
    faults(sim.url, hang=True)
    with pytest.raises(requests.Timeout):
        requests.post(
            sim.url + "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 1},
            timeout=0.5,
        )
    assert http_status(sim.url + "/health") == 200  # health still answers
    # a hung request still in flight shows up as active; reset lets it through
    result: list[int] = []

    def call() -> None:
        r = requests.post(
            sim.url + "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 1},
            headers={"X-Request-ID": "hung-1"},
            timeout=10,
        )
        result.append(r.status_code)

    t = threading.Thread(target=call)
    t.start()

    def hung() -> bool:
        stats = requests.get(sim.url + "/_control/stats", timeout=5).json()
        return any(r["request_id"] == "hung-1" for r in stats["active_requests"])

    wait_until(hung, timeout=5, what="the hung request to be active")
    requests.post(sim.url + "/_control/reset", timeout=5)
    t.join(10)
    assert result == [200]


def _engine_stats(url: str) -> dict:
    return requests.get(url + "/_control/stats", timeout=5).json()["engine"]


def test_stall_stops_tokens_while_health_and_metrics_answer(sim: Service) -> None:
    """A hung GPU: the stream stays open and silent, the server still answers probes."""
    body = {"model": MODEL, "prompt": "stall me", "max_tokens": 40, "stream": True}
    result: dict[str, tuple[list[str], bool]] = {}
    faults(sim.url, stall=True)
    t = threading.Thread(
        target=lambda: result.update(out=raw_stream(sim.url, "/v1/completions", body))
    )
    t.start()
    wait_until(lambda: _engine_stats(sim.url)["running"] == 1, timeout=5, what="stream running")
    before = _engine_stats(sim.url)["generation_tokens_total"]
    time.sleep(0.3)  # 150 token times at 2 ms: none may come
    assert _engine_stats(sim.url)["generation_tokens_total"] == before
    assert http_status(sim.url + "/health") == 200
    metrics = requests.get(sim.url + "/metrics", timeout=5).text
    assert "vllm:num_requests_running" in metrics and "vllm:generation_tokens_total" in metrics
    assert requests.get(sim.url + "/_control/faults", timeout=5).json()["stall"] is True
    faults(sim.url, stall=False)  # lifted: the stream goes on where it stopped
    t.join(10)
    events, clean = result["out"]
    assert clean and contents(events) == textgen.generate("stall me", 40)


def test_error_status_for_the_next_n_requests(sim: Service) -> None:
    state = faults(sim.url, error_status=503, error_count=2)
    assert (state["error_status"], state["error_count"]) == (503, 2)
    c = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=10)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as err:
            c.completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert err.value.status_code == 503
        assert "Simulated fault" in err.value.message
    assert c.completions.create(model=MODEL, prompt="x", max_tokens=1).usage.completion_tokens == 1
    faults(sim.url, error_status=429)  # no count: every request until reset
    for _ in range(3):
        assert requests.get(sim.url + "/v1/models", timeout=5).status_code == 429
    assert requests.get(sim.url + "/health", timeout=5).status_code == 200


def test_unhealthy_for_a_while(sim: Service) -> None:
    faults(sim.url, unhealthy_for_s=1.0)
    t0 = time.monotonic()
    assert http_status(sim.url + "/health") == 503
    r = requests.post(sim.url + "/v1/completions", json={"prompt": "x"}, timeout=5)
    assert r.status_code == 503 and "error" in r.json()
    wait_until(lambda: http_status(sim.url + "/health") == 200, timeout=5, what="healthy again")
    assert time.monotonic() - t0 >= 0.9


def test_control_api_rejects_bad_specs(sim: Service) -> None:
    r = requests.post(sim.url + "/_control/faults", json={"explode": True}, timeout=5)
    assert r.status_code == 400 and "unknown fault" in r.json()["error"]["message"]
    r = requests.post(sim.url + "/_control/faults", data=b"{", timeout=5)
    assert r.status_code == 400
    assert requests.get(sim.url + "/_control/faults", timeout=5).json() == {
        "drop_after_tokens": None,
        "drop_count": None,
        "hang": False,
        "stall": False,
        "error_status": None,
        "error_count": None,
        "unhealthy_for_s": None,
    }


def test_exit_dies_right_after_answering(procs: ProcessGroup, logdir: Path) -> None:
    sim = start_sim_vllm(procs, logdir, *FAST)
    r = requests.post(sim.url + "/_control/faults", json={"exit": True}, timeout=5)
    assert r.status_code == 200
    wait_until(lambda: not sim.proc.alive(), timeout=5, what="the simulator to exit")
    assert sim.proc.returncode() == 137
    assert http_status(sim.url + "/health") == 0


def test_exit_cuts_open_streams(procs: ProcessGroup, logdir: Path) -> None:
    sim = start_sim_vllm(procs, logdir, "--ttft-ms", "1", "--itl-ms", "20")
    host, port = "127.0.0.1", sim.port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 500, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.read1(4096)
    requests.post(sim.url + "/_control/faults", json={"exit": True}, timeout=5)
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while resp.read1(65536):
            pass
    conn.close()


def test_fault_flags(procs: ProcessGroup, logdir: Path) -> None:
    sim = start_sim_vllm(
        procs, logdir, *FAST, "--drop-after-tokens", "2", "--drop-count", "1",
        "--error-status", "500", "--error-count", "1",
    )  # fmt: skip
    assert requests.get(sim.url + "/_control/faults", timeout=5).json()["error_count"] == 1
    r = requests.post(sim.url + "/v1/completions", json={"prompt": "x"}, timeout=5)
    assert r.status_code == 500  # errors come before drops
    body = {"model": MODEL, "prompt": "x", "max_tokens": 6, "stream": True}
    events, clean = raw_stream(sim.url, "/v1/completions", body)
    assert not clean and len(contents(events)) == 2
    events, clean = raw_stream(sim.url, "/v1/completions", body)
    assert clean and len(contents(events)) == 6


def test_unhealthy_and_hang_flags(procs: ProcessGroup, logdir: Path) -> None:
    # --unhealthy-for-s: a slow start; the helper waits for /health = 200
    t0 = time.monotonic()
    sim = start_sim_vllm(procs, logdir, *FAST, "--unhealthy-for-s", "1.5", name="slow")
    assert time.monotonic() - t0 >= 1.4
    assert requests.post(sim.url + "/v1/completions", json={"prompt": "x"}).status_code == 200
    hung = start_sim_vllm(procs, logdir, *FAST, "--hang", name="hung")
    with pytest.raises(requests.Timeout):
        requests.get(hung.url + "/v1/models", timeout=0.5)


def test_config_file_and_bad_config(procs: ProcessGroup, logdir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("sim:\n  model: from-yaml\n  itl_ms: 1\nfaults:\n  error_status: 502\n")
    sim = start_service(
        procs,
        logdir,
        "cfg",
        ["sim", "vllm", "--host", "127.0.0.1", "--config", str(cfg)],
        "/health",
    )
    assert requests.get(sim.url + "/v1/models", timeout=5).status_code == 502
    requests.post(sim.url + "/_control/reset", timeout=5)
    assert requests.get(sim.url + "/v1/models", timeout=5).json()["data"][0]["id"] == "from-yaml"
    cfg.write_text("sim:\n  itl_ms: fast\n")
    out = subprocess.run(
        spotrelay_argv("sim", "vllm", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "sim.itl_ms" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        spotrelay_argv("sim", "vllm", "--error-count", "3"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "error_count needs error_status" in out.stderr
