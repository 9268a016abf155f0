"""What a hostile client, or a careless holder of the node token, can do to a real router.

The router runs as a real process (gunicorn, gevent worker) with a control
listener on its own port, in front of ``spotrelay sim vllm`` nodes. Clients
are raw sockets where HTTP libraries would refuse to send the malformed
bytes. Everything stays on loopback and synchronises by polling with
deadlines.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from spotrelay.sim.loopback import free_port, wait_until
from tests.support import (
    HOST,
    ROUTER_TOKEN,
    metric,
    register_node,
    router_nodes,
    start_router,
    start_sim_vllm,
)
from tests.support.fake_engine import Script, fake_engine

MODEL = "sim-model"
AUTH = {"Authorization": f"Bearer {ROUTER_TOKEN}"}
BODY = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()


# -- helpers ---------------------------------------------------------------------------------


def exchange(port: int, data: bytes, *, timeout: float = 15.0, source: str = HOST) -> bytes:
    """Send raw bytes, half-close nothing, read until the router closes (or a full answer)."""
    with socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(data)
        return read_response(s, timeout)


def read_response(s: socket.socket, timeout: float) -> bytes:
    """Bytes until the first response is complete (by Content-Length) or the peer closes."""
    s.settimeout(timeout)
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return buf
        if not chunk:
            return buf
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return buf


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_openai_4xx(raw: bytes, status: int | None = None) -> dict:
    assert raw, "no answer at all"
    got, headers, body = parse(raw)
    assert 400 <= got < 500, raw[:300]
    if status is not None:
        assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), raw[:300]
    doc = json.loads(body)
    assert set(doc["error"]) >= {"message", "type", "code"}, doc
    return doc


def post(path: str, body: bytes, extra: str = "", te_chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked\r\n" if te_chunked else f"Content-Length: {len(body)}\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n{framing}{extra}\r\n"
    ).encode() + body


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def router(procs, logdir):
    control = free_port()
    svc = start_router(
        procs,
        logdir,
        {
            "server": {
                "control_port": control,
                "header_timeout_s": 2,
                "body_timeout_s": 2,
                "max_connections_per_ip": 40,
                "control_on_main_port": False,  # the default
            },
            "registry": {"ttl_s": 5, "max_nodes": 3},
            "routing": {"no_capacity_wait_s": 1},
        },
    )
    svc.control_url = f"http://{HOST}:{control}"
    svc.control_port = control
    return svc


@pytest.fixture
def sim(procs, logdir):
    return start_sim_vllm(procs, logdir, "--ttft-ms", "5", "--itl-ms", "2")


# -- 3, 4: malformed requests get OpenAI-shaped 4xx JSON, never HTML, never 5xx -----------------

CORPUS = {
    "bad chunk size": post("/v1/completions", b"zz\r\n{}\r\n0\r\n\r\n", te_chunked=True),
    "negative chunk size": post("/v1/completions", b"-5\r\nhello\r\n0\r\n\r\n", te_chunked=True),
    "huge chunk size": post(
        "/v1/completions", b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n", te_chunked=True
    ),
    "chunk without terminator": post("/v1/completions", b"2\r\n{}XX0\r\n\r\n", te_chunked=True),
    "CL and TE": post("/v1/completions", b"0\r\n\r\n", "Content-Length: 5\r\n", te_chunked=True),
    "duplicate CL": post("/v1/completions", BODY, f"Content-Length: {len(BODY) + 1}\r\n"),
    "non-numeric CL": b"POST /v1/completions HTTP/1.1\r\nHost: r\r\nContent-Length: 1e3\r\n\r\n",
    "NUL in header": post("/v1/completions", BODY, "X-Evil: a\x00b\r\n"),
    "NUL in path": b"GET /heal\x00thz HTTP/1.1\r\nHost: r\r\n\r\n",
    "over-long request line": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: r\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\nHost: r\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    + b"\r\n",
    "oversized header": b"GET /healthz HTTP/1.1\r\nHost: r\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n",
    "bad method": b"G\x01T / HTTP/1.1\r\nHost: r\r\n\r\n",
    "bad version": b"GET / HTTP/9.9\r\nHost: r\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    "unknown transfer coding": post("/v1/completions", BODY, "Transfer-Encoding: gzip\r\n"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_malformed_requests_get_openai_json_4xx(router, case):
    doc = assert_openai_4xx(exchange(router.port, CORPUS[case]))
    assert doc["error"]["message"]


def test_error_statuses_for_limits(router):
    assert_openai_4xx(exchange(router.port, CORPUS["over-long request line"]), 414)
    assert_openai_4xx(exchange(router.port, CORPUS["too many headers"]), 431)
    assert_openai_4xx(exchange(router.port, CORPUS["oversized header"]), 431)
    assert_openai_4xx(exchange(router.port, CORPUS["bad chunk size"]), 400)


def test_truncated_bodies_are_400_not_500(router):
    """A body cut off by the client's disconnect (chunked or by length): no 500, no traceback."""
    for data in (
        post("/v1/completions", b'10\r\n{"model": ', te_chunked=True),
        post("/v1/completions", BODY)[: -len(BODY) + 10],  # 10 of the declared bytes
    ):
        with socket.create_connection((HOST, router.port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # the client is gone mid-body
            raw = read_response(s, 10)
        if raw:  # the answer may or may not reach a half-closed client; never a 5xx
            assert_openai_4xx(raw, 400)
    log = router.proc.log_path.read_text()
    assert "Traceback" not in log and "internal_error" not in log
    assert metric(router.control_url, "spotrelay_router_requests_total", status="500") == 0


def test_error_on_a_keep_alive_connection_closes_it_after_the_answer(router):
    """After a malformed chunked body the framing is lost: one JSON answer, then close."""
    raw = exchange(
        router.port, CORPUS["bad chunk size"] + b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n"
    )
    assert raw.count(b"HTTP/1.1 ") == 1
    assert_openai_4xx(raw, 400)


# -- 2: slow clients are cut off; the control plane stays reachable ----------------------------


def test_slow_header_and_body_get_408(router):
    started = time.monotonic()
    with socket.create_connection((HOST, router.port), timeout=15) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: r\r\n")  # ... and nothing more
        raw = read_response(s, 15)
    assert_openai_4xx(raw, 408)
    assert time.monotonic() - started < 10
    with socket.create_connection((HOST, router.port), timeout=15) as s:
        s.sendall(post("/v1/completions", BODY)[: -len(BODY) + 3])  # head and 3 body bytes
        raw = read_response(s, 15)
    assert_openai_4xx(raw, 408)


def test_idle_connection_without_a_request_is_closed(router):
    with socket.create_connection((HOST, router.port), timeout=15) as s:
        raw = read_response(s, 15)  # sends nothing at all
    assert_openai_4xx(raw, 408)


def test_per_address_connection_cap(procs, logdir):
    """Over max_connections_per_ip from one address: 429 JSON; other addresses unaffected."""
    router = start_router(
        procs,
        logdir,
        {"server": {"control_port": free_port(), "max_connections_per_ip": 40}},
    )
    healthz = b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n"
    held = []
    try:
        for _ in range(40):
            held.append(
                socket.create_connection((HOST, router.port), source_address=("127.0.0.2", 0))
            )
        doc = assert_openai_4xx(exchange(router.port, healthz, source="127.0.0.2"), 429)
        assert doc["error"]["code"] == "too_many_connections"
        assert requests.get(f"{router.url}/healthz", timeout=5).status_code == 200
    finally:
        for s in held:
            s.close()
    # Closed connections give their slots back.
    wait_until(
        lambda: parse(exchange(router.port, healthz, source="127.0.0.2"))[0] == 200, timeout=10
    )
    log = router.proc.log_path.read_text()
    assert log.count("refusing connections from 127.0.0.2") >= 1


def test_slow_client_flood_leaves_registrations_and_health_intact(procs, logdir, sim):
    """A bounded flood: 300 connections trickling headers from many loopback addresses.

    The data listener's connection slots (worker_connections: 150) run out;
    heartbeats on the control listener keep the node registered, /healthz on
    it answers, and once the header deadline passes the data plane serves again.
    """
    control = free_port()
    router = start_router(
        procs,
        logdir,
        {
            "server": {
                "control_port": control,
                "worker_connections": 150,
                "header_timeout_s": 4,
                "max_connections_per_ip": 10,
            },
            "registry": {"ttl_s": 2},
        },
    )
    control_url = f"http://{HOST}:{control}"
    register_node(control_url, ROUTER_TOKEN, "n1", sim.url, MODEL)
    stop = threading.Event()
    beats = {"ok": 0, "failed": 0}

    def heartbeat() -> None:
        while not stop.is_set():
            try:
                register_node(control_url, ROUTER_TOKEN, "n1", sim.url, MODEL)
                beats["ok"] += 1
            except Exception:
                beats["failed"] += 1
            stop.wait(0.3)

    def trickle(sock: socket.socket) -> None:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: r\r\n":
            if stop.is_set():
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            stop.wait(1.0)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    flood: list[socket.socket] = []
    threads = []
    try:
        for i in range(300):  # 30 addresses x 10 connections: under the per-address cap
            s = socket.socket()
            s.setblocking(True)
            s.settimeout(5)
            s.bind((f"127.0.1.{i // 10 + 1}", 0))
            s.connect_ex((HOST, router.port))
            flood.append(s)
        for s in flood:
            t = threading.Thread(target=trickle, args=(s,), daemon=True)
            t.start()
            threads.append(t)
        # Every data-plane slot is held: a new client waits in the listen backlog.
        wait_until(lambda: not answers(f"{router.url}/healthz"), timeout=5, what="saturation")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # meanwhile the control listener answers
            assert requests.get(f"{control_url}/healthz", timeout=2).status_code == 200
            time.sleep(0.2)
        assert "n1" in router_nodes(control_url)
        # The header deadline frees the slots: the data plane answers again.
        wait_until(lambda: answers(f"{router.url}/healthz"), timeout=30, what="data plane")
        assert "n1" in router_nodes(control_url)
    finally:
        stop.set()
        for s in flood:
            s.close()
        beat.join(5)
    assert beats["failed"] == 0 and beats["ok"] > 5


def test_idle_keep_alive_connections_give_way_to_a_new_client(procs, logdir, sim):
    """100 connections from 5 addresses (under the per-address cap) send one request and idle.

    They would hold the data listener's 60 slots for keepalive_s (75 s) and a
    new client would wait in the backlog; as the listener fills, idle ones are
    closed after keepalive_min_s instead. Heartbeats (the control listener,
    where agents now point by default) never miss; no node expires.
    """
    router = start_router(
        procs,
        logdir,
        {"server": {"worker_connections": 60, "control_on_main_port": False},
         "registry": {"ttl_s": 3}},
    )  # fmt: skip
    register_node(router.control_url, ROUTER_TOKEN, "n1", sim.url, MODEL)
    stop = threading.Event()
    beats = {"ok": 0, "failed": 0}

    def heartbeat() -> None:
        while not stop.is_set():
            try:
                register_node(router.control_url, ROUTER_TOKEN, "n1", sim.url, MODEL)
                beats["ok"] += 1
            except Exception:
                beats["failed"] += 1
            stop.wait(0.5)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    flood: list[socket.socket] = []
    try:
        for i in range(100):
            s = socket.create_connection(
                (HOST, router.port), timeout=5, source_address=(f"127.0.0.{2 + i % 5}", 0)
            )
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")  # then idle, never closed
            flood.append(s)
        started = time.monotonic()
        resp = requests.post(f"{router.url}/v1/completions", data=BODY, timeout=20)
        assert resp.status_code == 200 and time.monotonic() - started < 10
        assert requests.get(f"{router.control_url}/healthz", timeout=2).status_code == 200
    finally:
        stop.set()
        beat.join(5)
        for s in flood:
            s.close()
    assert beats["failed"] == 0 and beats["ok"] >= 2
    assert metric(router.control_url, "spotrelay_router_node_events_total", event="expired") == 0
    log = router.proc.log_path.read_text()
    lines = [line for line in log.splitlines() if "idle connections after" in line]
    assert lines and "data listener" in lines[0], log[-2000:]
    assert len(lines) <= 3, "one line per 10 s, with a count"
    assert "Traceback" not in log and "Socket error" not in log, "a closed idle connection is quiet"


def test_behind_a_trusted_proxy_each_forwarded_client_is_capped_not_the_proxy(procs, logdir):
    """The load balancer (127.0.0.2) is not capped as one client; a spoofing client is itself."""
    slow = start_sim_vllm(procs, logdir, "--ttft-ms", "3000", name="slow")
    router = start_router(
        procs,
        logdir,
        {"server": {"max_connections_per_ip": 3, "trusted_proxies": ["127.0.0.2/32"]}},
    )
    register_node(router.control_url, ROUTER_TOKEN, "slow", slow.url, MODEL)

    def send(source: str, client: str) -> socket.socket:
        s = socket.create_connection((HOST, router.port), timeout=15, source_address=(source, 0))
        s.sendall(post("/v1/completions", BODY, extra=f"X-Forwarded-For: {client}\r\n"))
        return s

    held: list[socket.socket] = []
    try:
        # Through the balancer: 8 clients, and 3 requests of a ninth (its cap): all served.
        held += [send("127.0.0.2", f"1.2.3.4, 198.51.100.{i}") for i in range(8)]
        held += [send("127.0.0.2", "203.0.113.7") for _ in range(3)]
        wait_until(
            lambda: metric(slow.url, "vllm:num_requests_running") == 11, timeout=5, what="11 open"
        )
        fourth = post("/v1/completions", BODY, extra="X-Forwarded-For: 203.0.113.7\r\n")
        doc = assert_openai_4xx(exchange(router.port, fourth, source="127.0.0.2"), 429)
        assert "203.0.113.7" in doc["error"]["message"]
        # A direct client's X-Forwarded-For is not believed: it is capped as itself.
        held += [send("127.0.0.3", f"198.51.100.{100 + i}") for i in range(3)]
        spoof = post("/v1/completions", BODY, extra="X-Forwarded-For: 198.51.100.200\r\n")
        assert_openai_4xx(exchange(router.port, spoof, source="127.0.0.3"), 429)
        statuses = [parse(read_response(s, 15))[0] for s in held]
        assert statuses == [200] * len(held)
    finally:
        for s in held:
            s.close()


# -- control listener scope ----------------------------------------------------------------------


def test_control_listener_serves_only_the_control_plane(router, sim):
    register_node(router.control_url, ROUTER_TOKEN, "n1", sim.url, MODEL)
    assert requests.get(f"{router.control_url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{router.control_url}/metrics", timeout=5).status_code == 200
    resp = requests.post(f"{router.control_url}/v1/completions", data=BODY, timeout=5)
    assert resp.status_code == 404 and resp.json()["error"]["message"]
    # The capacity controller's drain is control plane too: served (404 from the route itself).
    resp = requests.post(
        f"{router.control_url}/instances/i-0123456789abcdef0/drain", headers=AUTH, timeout=5
    )
    assert resp.status_code == 404 and isinstance(resp.json()["error"], str)
    # control_on_main_port off (the default): the main port serves no control path.
    assert requests.get(f"{router.url}/nodes", headers=AUTH, timeout=5).status_code == 404
    resp = requests.post(f"{router.url}/v1/completions", data=BODY, timeout=10)
    assert resp.status_code == 200


def test_control_plane_on_the_main_port_only_when_asked(router, procs, logdir):
    """Off by default (the migration note in docs/router.md); on for agents still on 8080."""
    from spotrelay.agent.settings import AgentConfig
    from spotrelay.core.config import load
    from spotrelay.router.settings import RouterConfig

    assert load(RouterConfig, None, env={}).server.control_on_main_port is False
    assert load(AgentConfig, None, env={}).router.urls == ["http://router:8081"]
    assert requests.get(f"{router.url}/nodes", headers=AUTH, timeout=5).status_code == 404
    assert requests.get(f"{router.url}/metrics", timeout=5).status_code == 404
    assert requests.get(f"{router.url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{router.control_url}/nodes", headers=AUTH, timeout=5).ok
    old = start_router(procs, logdir, {"server": {"control_on_main_port": True}}, name="old")
    assert requests.get(f"{old.url}/nodes", headers=AUTH, timeout=5).ok
    assert requests.get(f"{old.url}/metrics", timeout=5).ok


# -- 1: metrics labels stay bounded -------------------------------------------------------------


def test_client_model_names_never_become_metric_labels(router, sim):
    register_node(router.control_url, ROUTER_TOKEN, "n1", sim.url, MODEL)
    before = requests.get(f"{router.control_url}/metrics", timeout=5).text.count("\n")
    for i in range(50):
        resp = requests.post(
            f"{router.url}/v1/completions", json={"model": f"rnd-{i}-" + "x" * 2000}, timeout=10
        )
        assert resp.status_code == 404  # a live fleet that serves no such model
    text = requests.get(f"{router.control_url}/metrics", timeout=5).text
    assert "rnd-" not in text
    assert text.count("\n") - before < 10
    assert metric(router.control_url, "spotrelay_router_requests_total", model="other") == 50


# -- 5: log injection ---------------------------------------------------------------------------


def test_control_characters_in_logged_fields_are_escaped(router, sim):
    register_node(router.control_url, ROUTER_TOKEN, "n1", sim.url, MODEL)
    forged = "x\n2026-01-01 00:00:00,000 INFO  spotrelay.router: forged line"
    resp = requests.post(f"{router.url}/v1/completions", json={"model": forged}, timeout=10)
    assert resp.status_code == 404
    for node_id in ("evil%0A", "evil%0Aline"):
        resp = requests.put(
            f"{router.control_url}/nodes/{node_id}",
            json={"url": sim.url, "models": [MODEL]},
            headers=AUTH,
            timeout=5,
        )
        assert resp.status_code == 400
    wait_until(lambda: "x\\x0a2026" in router.proc.log_path.read_text(), timeout=10)
    assert "\nforged" not in router.proc.log_path.read_text().replace("\\x0a", "")
    for line in router.proc.log_path.read_text().splitlines():
        assert not line.startswith("2026-01-01")


# -- 6: a client leaving a non-streaming request aborts it on the node -------------------------


def test_client_disconnect_aborts_a_non_streaming_request(router, procs, logdir):
    slow = start_sim_vllm(procs, logdir, "--ttft-ms", "5", "--itl-ms", "100", name="slow")
    register_node(router.control_url, ROUTER_TOKEN, "n1", slow.url, MODEL)
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 300}).encode()  # ~30 s
    with socket.create_connection((HOST, router.port), timeout=10) as s:
        s.sendall(post("/v1/completions", body))
        wait_until(lambda: metric(slow.url, "vllm:num_requests_running") == 1, timeout=10)
        s.close()
        left = time.monotonic()
    wait_until(lambda: metric(slow.url, "vllm:num_requests_running") == 0, timeout=5)
    assert time.monotonic() - left < 3  # polled within 1 s; the rest is scrape latency
    wait_until(
        lambda: metric(router.control_url, "spotrelay_router_client_disconnects_total") == 1,
        timeout=5,
    )
    wait_until(lambda: "outcome=client_disconnect" in router.proc.log_path.read_text(), timeout=5)
    lines = [
        line
        for line in router.proc.log_path.read_text().splitlines()
        if "POST /v1/completions" in line
    ]
    assert len(lines) == 1 and "POST /v1/completions 499" in lines[0], lines
    nodes = router_nodes(router.control_url)
    assert nodes["n1"]["in_flight"] == 0 and nodes["n1"]["failures"]["total"] == 0


# -- 7: no request loops ------------------------------------------------------------------------


def test_registering_the_router_itself_is_refused(router):
    for url in (router.url, router.control_url, router.url.replace("127.0.0.1", "localhost")):
        resp = requests.put(
            f"{router.control_url}/nodes/self",
            json={"url": url, "models": [MODEL]},
            headers=AUTH,
            timeout=5,
        )
        assert resp.status_code == 400 and "own listener" in resp.json()["error"]


def test_a_loop_through_another_router_is_cut_without_ejecting(procs, logdir, router, sim):
    """Router A's node is router B, whose node is router A: the hop mark stops the loop."""
    other = start_router(procs, logdir, {"server": {"control_port": free_port()}}, name="other")
    register_node(router.control_url, ROUTER_TOKEN, "to-other", other.url, MODEL)
    register_node(other.control_url, ROUTER_TOKEN, "back", router.url, MODEL)
    resp = requests.post(f"{router.url}/v1/completions", data=BODY, timeout=30)
    assert resp.status_code == 508 and resp.json()["error"]["code"] == "loop_detected"
    assert metric(router.control_url, "spotrelay_router_upstream_attempts_total", outcome="loop")
    assert router_nodes(router.control_url)["to-other"]["ejection"]["ejected"] is False
    # A forged mark from a client is just a header the router does not know: served normally.
    register_node(router.control_url, ROUTER_TOKEN, "n1", sim.url, MODEL)
    requests.delete(f"{router.control_url}/nodes/to-other", headers=AUTH, timeout=5)
    resp = requests.post(
        f"{router.url}/v1/completions",
        data=BODY,
        headers={"X-Spotrelay-Hop": "0123456789abcdef"},
        timeout=10,
    )
    assert resp.status_code == 200


def test_a_replayed_hop_mark_is_served_and_ejects_nothing(procs, logdir, router):
    """An engine sees every mark; replaying one, to the router or through another, is no 508.

    Router B's node is router A (a chain), A's node an engine that shows what
    it received. Before, the replayed mark got 508 and made B eject A.
    """
    other = start_router(procs, logdir, {"server": {"control_port": free_port()}}, name="other")
    other_control = other.control_url
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": True})
    with fake_engine(Script(["a", "b"], finish="stop")) as engine:
        register_node(router.control_url, ROUTER_TOKEN, "engine", engine.url, MODEL)
        register_node(other_control, ROUTER_TOKEN, "router-a", router.url, MODEL)
        assert requests.post(f"{router.url}/v1/completions", data=body, timeout=10).ok
        observed = engine.headers[-1]["X-Spotrelay-Hop"]
        assert observed and "," not in observed  # one mark: this attempt's
        for target in (router.url, other.url, router.url, other.url, other.url):
            resp = requests.post(
                f"{target}/v1/completions",
                data=body,
                headers={"X-Spotrelay-Hop": observed, "Content-Type": "application/json"},
                timeout=10,
            )
            assert resp.status_code == 200, resp.text
        assert {h["X-Spotrelay-Hop"].split(", ")[-1] for h in engine.headers[1:]}.isdisjoint(
            {observed}
        ), "each attempt makes a fresh mark"
    node = router_nodes(other_control)["router-a"]
    assert node["failures"]["total"] == 0 and node["ejection"]["ejected"] is False


# -- 8: odd node URLs ---------------------------------------------------------------------------


def test_fullwidth_host_is_normalised_and_served(router, sim):
    fullwidth = sim.url.replace("127", "\uff11\uff12\uff17")
    ack = register_node(router.control_url, ROUTER_TOKEN, "wide", fullwidth, MODEL)
    assert ack["url"] == sim.url
    for _ in range(3):
        assert (
            requests.post(f"{router.url}/v1/completions", data=BODY, timeout=10).status_code == 200
        )
    assert router_nodes(router.control_url)["wide"]["in_flight"] == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:0",
        "http://127.0.0.1 :8000",
        "http://127.0.0.1:8000\t",
        "http://127.0.0.1:8000/\x7f",
        "http://127.0.0.1:\u0668\u0660",
    ],
)
def test_bad_node_urls_are_refused(router, url):
    resp = requests.put(
        f"{router.control_url}/nodes/n",
        data=json.dumps({"url": url, "models": [MODEL]}),
        headers=AUTH,
        timeout=5,
    )
    assert resp.status_code == 400 and resp.json()["error"]


# -- 9: registration cap -------------------------------------------------------------------------


def test_registry_cap_gives_429_and_a_log_line(router, sim):
    for i in range(3):
        register_node(router.control_url, ROUTER_TOKEN, f"n{i}", sim.url, MODEL)
    resp = requests.put(
        f"{router.control_url}/nodes/n3",
        json={"url": sim.url, "models": [MODEL]},
        headers=AUTH,
        timeout=5,
    )
    assert resp.status_code == 429 and "registry.max_nodes" in resp.json()["error"]
    register_node(router.control_url, ROUTER_TOKEN, "n0", sim.url, MODEL)  # heartbeats still pass
    assert len(router_nodes(router.control_url)) == 3
    wait_until(
        lambda: "refused registration of node n3" in router.proc.log_path.read_text(), timeout=5
    )


def test_the_gthread_worker_has_the_same_guards(procs, logdir):
    router = start_router(
        procs,
        logdir,
        {
            "server": {
                "worker_class": "gthread",
                "control_port": free_port(),
                "header_timeout_s": 2,
                "body_timeout_s": 2,
                "max_connections_per_ip": 5,
            }
        },
    )
    assert_openai_4xx(exchange(router.port, CORPUS["bad chunk size"]), 400)
    assert_openai_4xx(exchange(router.port, CORPUS["over-long request line"]), 414)
    with socket.create_connection((HOST, router.port), timeout=15) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: r\r\n")
        assert_openai_4xx(read_response(s, 15), 408)
    with socket.create_connection((HOST, router.port), timeout=15) as s:
        s.sendall(post("/v1/completions", BODY)[: -len(BODY) + 3])
        assert_openai_4xx(read_response(s, 15), 408)
    held = [
        socket.create_connection((HOST, router.port), source_address=("127.0.0.3", 0))
        for _ in range(5)
    ]
    try:
        raw = exchange(router.port, b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n", source="127.0.0.3")
        assert_openai_4xx(raw, 429)
    finally:
        for s in held:
            s.close()
    # Closed connections give their slots back.
    wait_until(
        lambda: (
            parse(
                exchange(
                    router.port, b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n", source="127.0.0.3"
                )
            )[0]
            == 200
        ),
        timeout=15,
    )
