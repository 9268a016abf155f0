"""Several routers, several gunicorn workers each, one registry in a real ``redis-server``.

Every router and engine is a real process on loopback; Redis runs on a
random port and is stopped, restarted and left out by the tests themselves.
Which worker answered is read from ``X-Spotrelay-Router`` on ``GET /nodes``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import requests

from spotrelay.core.protocol import valid_node_id
from spotrelay.sim.loopback import free_port, wait_until
from spotrelay.sim.processes import ProcessGroup
from spotrelay.sim.redis_local import LocalRedis, NoRedisServer, start_local_redis
from tests.support import (
    ROUTER_TOKEN,
    Service,
    post_json,
    register_node,
    start_agent,
    start_imds,
    start_router,
    start_sim_vllm,
)

MODEL = "sim-model"
HOST_IP = "127.0.0.1"
pytestmark = pytest.mark.timeout(180)


def fleet_config(redis_url: str, workers: int = 2, ttl_s: float = 5) -> dict:
    return {
        "server": {"workers": workers},
        "registry": {"backend": "redis", "redis_url": redis_url, "ttl_s": ttl_s,
                     "redis_timeout_s": 1, "redis_backoff_max_s": 0.5},
        "routing": {"no_capacity_wait_s": 20},
        "timeouts": {"connect_s": 1},
    }  # fmt: skip


def start_redis(
    procs: ProcessGroup, logdir: Path, port: int | None = None, extra: tuple[str, ...] = ()
) -> LocalRedis:
    try:
        return start_local_redis(procs, logdir, port=port, extra=extra)
    except NoRedisServer as exc:
        pytest.skip(str(exc))


def view(router: Service) -> tuple[str, str, dict[str, dict]]:
    """One fresh connection's ``GET /nodes``: (worker id, registry state, nodes by id)."""
    parts = urlsplit(router.control_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", "/nodes", headers={"Authorization": f"Bearer {ROUTER_TOKEN}"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        worker = resp.getheader("X-Spotrelay-Router") or ""
        return worker, resp.getheader("X-Spotrelay-Registry") or "", {n["id"]: n for n in body}
    finally:
        conn.close()


def workers_of(router: Service, count: int) -> set[str]:
    """Poll with new connections until ``count`` distinct workers have answered."""
    seen: set[str] = set()

    def enough() -> bool:
        seen.add(view(router)[0])
        return len(seen) >= count

    wait_until(enough, timeout=30, interval=0.01, what=f"{count} workers of {router.url}")
    return seen


def until_every_worker(
    router: Service, workers: set[str], check, timeout: float, what: str, since: float = 0.0
) -> dict[str, float]:
    """Poll until each worker answered with a view satisfying ``check``; when, per worker.

    Times are seconds after ``since`` (a ``time.monotonic()``; default: now).
    """
    t0 = since or time.monotonic()
    done: dict[str, float] = {}

    def all_done() -> bool:
        worker, _state, nodes = view(router)
        if worker not in done and check(nodes):
            done[worker] = time.monotonic() - t0
        return set(done) >= workers

    wait_until(all_done, timeout=timeout, interval=0.005, what=what)
    return done


def complete(router: Service, timeout: float = 30) -> requests.Response:
    body = {"model": MODEL, "prompt": "the fleet", "max_tokens": 4}
    return requests.post(f"{router.url}/v1/completions", json=body, timeout=timeout)


def backend_up(router: Service) -> float:
    """The backend gauge of whichever worker answers."""
    text = requests.get(f"{router.control_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("spotrelay_router_registry_backend_up{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no spotrelay_router_registry_backend_up in /metrics")


class Heartbeats:
    """PUT /nodes/{id} every ``interval_s``, alternating between routers (a load balancer)."""

    def __init__(self, routers: list[Service], node_id: str, engine_url: str, interval_s=0.5):
        self.routers, self.node_id, self.engine_url = routers, node_id, engine_url
        self.interval_s = interval_s
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            router = self.routers[i % len(self.routers)]
            i += 1
            try:
                register_node(
                    router.control_url, ROUTER_TOKEN, self.node_id, self.engine_url, MODEL
                )
            except Exception as exc:  # recorded: the tests assert there were none
                self.errors.append(f"{router.url}: {exc}")
            self._stop.wait(self.interval_s)


class Traffic:
    """Completions spread over routers from a few threads; every outcome recorded."""

    def __init__(self, routers: list[Service], threads: int = 4) -> None:
        self.routers = routers
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            router = self.routers[i % len(self.routers)]
            i += 1
            try:
                resp = complete(router)
                good = resp.status_code == 200 and resp.json()["choices"][0]["text"]
                detail = f"{resp.status_code} {resp.text[:200]}"
            except Exception as exc:
                good, detail = False, repr(exc)
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(f"{router.url}: {detail}")


@pytest.fixture
def engine(procs: ProcessGroup, logdir: Path) -> Service:
    return start_sim_vllm(procs, logdir, "--ttft-ms", "5", "--itl-ms", "5")


@pytest.fixture
def pair(procs: ProcessGroup, logdir: Path) -> Iterator[tuple[LocalRedis, Service, Service]]:
    local = start_redis(procs, logdir)
    cfg = fleet_config(local.url)
    a = start_router(procs, logdir, cfg, name="router-a")
    b = start_router(procs, logdir, cfg, name="router-b")
    yield local, a, b


# -- sharing ---------------------------------------------------------------------------------


def test_node_registered_at_a_is_routable_on_every_worker_of_b(pair, engine) -> None:
    _local, a, b = pair
    workers_b = workers_of(b, 2)
    wait_until(lambda: view(b)[1] == "redis", timeout=10, what="router B's sync to be up")
    sent = time.monotonic()
    register_node(a.control_url, ROUTER_TOKEN, "n-shared", engine.url, MODEL)
    applied: dict[str, float] = {}

    def when_applied(nodes: dict[str, dict]) -> bool:
        node = nodes.get("n-shared")
        if node is None or node["state"] != "ready":
            return False
        # A worker registers a node it learns from Redis at the moment it applies the
        # message, so the answer itself says when that was, however late we asked.
        applied[str(len(applied))] = time.monotonic() - node["registered_s_ago"] - sent
        return True

    until_every_worker(b, workers_b, when_applied, timeout=10, what="every worker of B")
    print(f"PUT at A -> applied by each worker of B after {sorted(applied.values())} s")
    assert max(applied.values()) <= 1.0, applied
    for _ in range(6):  # new connections: both workers of B route it
        resp = complete(b)
        assert resp.status_code == 200, resp.text

    # A drain at B and a delete at A reach every worker of the other router.
    requests.post(
        f"{b.control_url}/nodes/n-shared/drain", headers=_auth(), timeout=5
    ).raise_for_status()
    until_every_worker(
        a, workers_of(a, 2), lambda n: n.get("n-shared", {}).get("state") == "draining",
        timeout=5, what="A to see the drain",
    )  # fmt: skip
    requests.delete(
        f"{a.control_url}/nodes/n-shared", headers=_auth(), timeout=5
    ).raise_for_status()
    until_every_worker(
        b, workers_b, lambda n: "n-shared" not in n, timeout=5, what="B to see the delete"
    )

    # An off-node interruption (controller -> drain by instance id) at B reaches A too.
    register_node(
        a.control_url, ROUTER_TOKEN, "n-ec2", engine.url, MODEL, instance_id="i-0f1ee700000000002"
    )
    until_every_worker(b, workers_b, lambda n: "n-ec2" in n, timeout=5, what="B to see n-ec2")
    requests.post(
        f"{b.control_url}/instances/i-0f1ee700000000002/drain", headers=_auth(), timeout=5
    ).raise_for_status()
    until_every_worker(
        a, workers_of(a, 2), lambda n: n.get("n-ec2", {}).get("state") == "draining",
        timeout=5, what="A to see the drain by instance id",
    )  # fmt: skip


def test_ttl_expiry_agrees_across_routers(pair, engine) -> None:
    local, a, b = pair
    workers_a, workers_b = workers_of(a, 2), workers_of(b, 2)
    t0 = time.monotonic()  # ttl_s is 5, and this is the only heartbeat
    register_node(a.control_url, ROUTER_TOKEN, "n-ttl", engine.url, MODEL)
    until_every_worker(b, workers_b, lambda n: "n-ttl" in n, timeout=5, what="B to see n-ttl")
    gone = {}
    for router, workers in ((a, workers_a), (b, workers_b)):
        gone[router.url] = until_every_worker(
            router, workers, lambda n: "n-ttl" not in n, timeout=15, what="expiry", since=t0
        )
    times = [t for per_worker in gone.values() for t in per_worker.values()]
    # Each worker dropped it once ttl_s had passed, and all within a sweep of each other.
    assert min(times) >= 4.9 and max(times) <= 9.0, gone
    client = redis.Redis.from_url(local.url)
    assert not client.exists("spotrelay:node:n-ttl")
    assert b"n-ttl" not in client.smembers("spotrelay:nodes")


def test_spot_notice_through_a_excludes_the_node_on_b(
    procs: ProcessGroup, logdir: Path, pair, engine
) -> None:
    """The agent talks to router A only; router B stops routing to its node too."""
    _local, a, b = pair
    instance_id = "i-0f1ee700000000001"
    imds = start_imds(procs, logdir, "--instance-id", instance_id, "--az", "us-east-1a")
    start_agent(
        procs,
        logdir,
        {
            "router": {"urls": [a.control_url], "node_token": ROUTER_TOKEN},
            "engine": {"url": engine.url, "model": MODEL, "systemd_unit": None},
            "imds": {"url": imds.url, "poll_interval_s": 0.25},
            "heartbeat": {"interval_s": 0.5},
            "drain": {"safety_margin_s": 1, "stop_engine": False},
            "state_dir": str(logdir / "agent-state"),
        },
        env={"AWS_EC2_METADATA_DISABLED": "true"},
    )
    workers_b = workers_of(b, 2)
    until_every_worker(
        b, workers_b, lambda n: n.get(instance_id, {}).get("state") == "ready",
        timeout=30, what="B to see the agent's node ready",
    )  # fmt: skip
    sent = time.monotonic()
    post_json(f"{imds.url}/_control/spot", {"action": "terminate", "lead_s": 30})
    excluded = until_every_worker(
        b, workers_b, lambda n: n.get(instance_id, {}).get("state", "draining") != "ready",
        timeout=10, what="B to exclude the node", since=sent,
    )  # fmt: skip
    notice_to_excluded = max(excluded.values())
    print(f"notice-to-excluded on router B: {notice_to_excluded:.3f}s per worker {excluded}")
    # Agent IMDS poll (0.25 s) + heartbeat + Redis fan-out; generous for a loaded CI box.
    assert notice_to_excluded <= 3.0, excluded


# -- Redis faults ----------------------------------------------------------------------------


def test_redis_restart_under_traffic_loses_no_request(
    procs: ProcessGroup, logdir: Path, pair, engine
) -> None:
    local, a, b = pair
    routers = [a, b]
    with Heartbeats(routers, "n-busy", engine.url) as beats, Traffic(routers) as traffic:
        wait_until(lambda: traffic.ok >= 20, timeout=30, what="traffic to flow")
        local.proc.kill()  # SIGKILL: no persistence, so Redis comes back empty
        wait_until(lambda: backend_up(a) == 0, timeout=10, what="A to notice Redis is gone")
        during = traffic.ok
        wait_until(lambda: traffic.ok >= during + 20, timeout=30, what="traffic without Redis")
        start_redis(procs, logdir, port=local.port)
        for router in routers:
            until_every_worker(
                router, workers_of(router, 2), lambda n: "n-busy" in n, timeout=20,
                what="views to be rebuilt",
            )  # fmt: skip
            wait_until(lambda r=router: backend_up(r) == 1, timeout=20, what="backend up")
        after = traffic.ok
        wait_until(lambda: traffic.ok >= after + 20, timeout=30, what="traffic after Redis")
    assert traffic.failures == [] and beats.errors == []
    # Converged: every worker of both routers shows the same node, and so does Redis.
    for router in routers:
        for _ in range(6):
            _worker, state, nodes = view(router)
            assert state == "redis" and set(nodes) == {"n-busy"}
    assert redis.Redis.from_url(local.url).exists("spotrelay:node:n-busy")
    # One line per transition and worker: up at start, down, up again (not one per retry).
    log = (logdir / "router-a.log").read_text()
    assert log.count("registry backend redis down (redis://127.0.0.1:") == 2, log
    assert log.count("registry backend redis up (") == 4


def test_router_starting_with_redis_down_serves_from_heartbeats(
    procs: ProcessGroup, logdir: Path, engine
) -> None:
    port = free_port()  # nothing listens here yet
    router = start_router(procs, logdir, fleet_config(f"redis://127.0.0.1:{port}/0"))
    assert backend_up(router) == 0
    with Heartbeats([router], "n-early", engine.url, interval_s=0.2) as beats:
        resp = complete(router)  # waits for a heartbeat to reach the worker that serves it
        assert resp.status_code == 200, resp.text
        assert view(router)[1] == "redis-down"
        local = start_redis(procs, logdir, port=port)
        wait_until(
            lambda: redis.Redis.from_url(local.url).exists("spotrelay:node:n-early"),
            timeout=20,
            what="the node to be written to Redis once it is back",
        )
        until_every_worker(
            router, workers_of(router, 2), lambda n: "n-early" in n, timeout=10,
            what="every worker to share the view",
        )  # fmt: skip
    assert beats.errors == []
    log = (logdir / "router.log").read_text()
    assert "registry backend redis unreachable at start" in log
    assert "registry backend redis up" in log


def test_acl_user_with_a_password_file(procs: ProcessGroup, logdir: Path, engine) -> None:
    """An ACL user limited to the prefix's keys and channel; the password from a file, never
    logged; a wrong one leaves the router serving from heartbeats, saying why."""
    acl = ("--user", "default", "off",
           "--user", "spot", "on", ">s3cret-pw", "~fleet1:*", "&fleet1:*",
           "+@read", "+@write", "+@scripting", "+@pubsub", "+@connection", "+time",
           "-@dangerous")  # fmt: skip
    local = start_redis(procs, logdir, extra=acl)
    secret = logdir / "redis-auth"
    secret.write_text("s3cret-pw\n")
    cfg = fleet_config(f"redis://spot@127.0.0.1:{local.port}/0", workers=1)
    cfg["registry"] |= {"redis_password_file": str(secret), "redis_key_prefix": "fleet1"}
    a = start_router(procs, logdir, cfg, name="router-a")
    b = start_router(procs, logdir, cfg, name="router-b")
    wait_until(lambda: backend_up(a) == 1 and backend_up(b) == 1, timeout=10, what="ACL login")
    register_node(a.control_url, ROUTER_TOKEN, "n-acl", engine.url, MODEL)
    wait_until(lambda: "n-acl" in view(b)[2], timeout=5, what="B to see n-acl")

    wrong = logdir / "wrong-auth"
    wrong.write_text("not-it")
    cfg["registry"]["redis_password_file"] = str(wrong)
    c = start_router(procs, logdir, cfg, name="router-c")
    register_node(c.control_url, ROUTER_TOKEN, "n-local", engine.url, MODEL)
    assert view(c)[1] == "redis-down" and "n-local" in view(c)[2]
    assert complete(c).status_code == 200
    logs = "".join((logdir / f"router-{x}.log").read_text() for x in "abc")
    assert "s3cret-pw" not in logs and "not-it" not in logs
    assert "registry backend redis unreachable at start (redis://spot@127.0.0.1" in logs


def write_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, public_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("test-ca"))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST_IP))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    paths = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    pem = serialization.Encoding.PEM
    paths[0].write_bytes(cert("test-ca", ca_key.public_key(), True).public_bytes(pem))
    paths[1].write_bytes(cert(HOST_IP, key.public_key(), False).public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def tls_ping(port: int, ca: Path) -> bool:
    client = redis.Redis(host=HOST_IP, port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def test_tls_registry_verified_against_a_ca_file(procs: ProcessGroup, logdir: Path, engine):
    """rediss:// with the server's CA given: shared; with the system's trust store (which
    does not know this CA) the link stays down, said in the log, and the router still serves."""
    ca, cert, key = write_tls_files(logdir)
    port = free_port()
    tls = (
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
    )
    try:
        start_local_redis(procs, logdir, port=port, extra=tls, ready=lambda: tls_ping(port, ca))
    except NoRedisServer as exc:
        pytest.skip(str(exc))
    cfg = fleet_config(f"rediss://{HOST_IP}:{port}/0", workers=1)
    cfg["registry"]["redis_ca_file"] = str(ca)
    a = start_router(procs, logdir, cfg, name="router-a")
    b = start_router(procs, logdir, cfg, name="router-b")
    register_node(a.control_url, ROUTER_TOKEN, "n-tls", engine.url, MODEL)
    wait_until(lambda: "n-tls" in view(b)[2], timeout=10, what="B to see n-tls over TLS")
    assert view(b)[1] == "redis"

    del cfg["registry"]["redis_ca_file"]
    c = start_router(procs, logdir, cfg, name="router-c")
    register_node(c.control_url, ROUTER_TOKEN, "n-local", engine.url, MODEL)
    assert view(c)[1] == "redis-down" and complete(c).status_code == 200
    assert "CERTIFICATE_VERIFY_FAILED" in (logdir / "router-c.log").read_text()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ROUTER_TOKEN}"}


# -- one /metrics for all workers -----------------------------------------------------------


def metrics_view(router: Service) -> tuple[str, dict[tuple[str, tuple], float]]:
    """A fresh connection's ``GET /metrics``: (worker id, samples by (name, sorted labels))."""
    from prometheus_client.parser import text_string_to_metric_families

    parts = urlsplit(router.control_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
        worker = resp.getheader("X-Spotrelay-Router") or ""
    finally:
        conn.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return worker, samples


def until_every_worker_reports(router: Service, workers: set[str], check, what: str) -> None:
    """Poll ``/metrics`` on fresh connections until each worker answered ``check(samples)``."""
    done: set[str] = set()

    def all_done() -> bool:
        worker, samples = metrics_view(router)
        if check(samples):
            done.add(worker)
        return done >= workers

    wait_until(all_done, timeout=20, interval=0.02, what=what)


def served(samples: dict) -> float:
    key = ("spotrelay_router_requests_total", (("model", MODEL), ("status", "200")))
    return samples.get(key, 0.0)


def test_metrics_describe_the_whole_router_whichever_worker_answers(
    procs: ProcessGroup, logdir: Path, engine
) -> None:
    """Counters sum every worker and survive a worker's restart; gauges sum live workers."""
    import psutil

    local = start_redis(procs, logdir)
    runtime = logdir / "run"  # what systemd's RuntimeDirectory= hands the packaged unit
    runtime.mkdir()
    router = start_router(
        procs, logdir, fleet_config(local.url, ttl_s=60), env={"RUNTIME_DIRECTORY": str(runtime)}
    )
    register_node(router.control_url, ROUTER_TOKEN, "n-1", engine.url, MODEL)
    workers = workers_of(router, 2)
    until_every_worker(router, workers, lambda n: "n-1" in n, timeout=10, what="n-1 everywhere")
    (shared,) = runtime.iterdir()  # the workers' files live there, not in /tmp

    answered: set[str] = set()
    for _ in range(20):  # a new connection each: gunicorn spreads them over both workers
        resp = complete(router)
        assert resp.status_code == 200, resp.text
        answered.add(resp.headers.get("X-Spotrelay-Router", ""))
    until_every_worker_reports(
        router, workers, lambda s: served(s) == 20, "every worker to report all 20 requests"
    )

    # A stream held open on one worker shows in the gauges whichever worker is scraped.
    body = {"model": MODEL, "prompt": "a long one", "max_tokens": 3000, "stream": True}
    with requests.post(f"{router.url}/v1/completions", json=body, stream=True, timeout=30) as s:
        assert s.status_code == 200
        lines = s.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines)
        in_flight = ("spotrelay_router_node_in_flight", (("node", "n-1"), ("state", "ready")))
        until_every_worker_reports(
            router,
            workers,
            lambda m: (
                m.get(("spotrelay_router_active_requests", ())) == 1 and m.get(in_flight) == 1
            ),
            "every worker to report the open stream",
        )

    until_every_worker_reports(
        router, workers, lambda m: m.get(("spotrelay_router_active_requests", ())) == 0,
        "the closed stream to leave the gauges",
    )  # fmt: skip

    # gunicorn replaces a killed worker; the router's totals do not go back.
    victim = psutil.Process(router.proc.pid).children()[0]
    victim.kill()
    replacement = wait_until(  # answers under its own pid
        lambda: (w := view(router)[0]) not in workers and w,
        timeout=30, interval=0.01, what="gunicorn to replace the killed worker",
    )  # fmt: skip
    survivors = {w for w in workers if not w.endswith(f" pid {victim.pid}")} | {replacement}
    assert len(survivors) == 2
    up = ("spotrelay_router_registry_backend_up", (("backend", "redis"),))
    until_every_worker_reports(  # the replacement reports down until its sync is up
        router, survivors, lambda s: s.get(up) == 1, "the replacement to reach Redis"
    )
    for _ in range(10):
        worker, samples = metrics_view(router)
        assert served(samples) >= 21, (worker, served(samples))  # the stream counted too
        assert samples.get(("spotrelay_router_active_requests", ())) == 0
        assert samples[up] == 1
    assert list(shared.glob("counter_*.db")) and list(shared.glob("worker-state-*.json"))
    router.proc.stop()
    assert not shared.exists()  # a restart starts from nothing


def test_junk_in_redis_is_skipped_logged_once_and_cannot_crowd_out_a_real_node(
    procs: ProcessGroup, logdir: Path
) -> None:
    """Malformed hashes, bad ids, junk messages and stale junk filling max_nodes.

    Each used to leave every worker ``redis-down`` (a parse error), raise in
    every worker (``PUBLISH ... '[]'``), be routable (``evil\\nFORGED``, 5,000
    characters) or answer a real node 429.
    """
    local = start_redis(procs, logdir)
    client = redis.Redis.from_url(local.url)
    seconds, micros = client.time()
    stale_ms = seconds * 1000 + micros // 1000 - 12_000  # silent 12 s of ttl_s 15

    def node_hash(n: int, **fields: str) -> dict[str, object]:
        report = json.dumps({"url": f"http://10.1.0.{n}:8000", "models": ["junk"]})
        doc = {"url": f"http://10.1.0.{n}:8000", "report": report, "drained": "0"}
        return {**doc, "seen_ms": stale_ms, **fields}

    junk = {f"junk-{i}": node_hash(i) for i in range(30)}  # valid, but 30 > max_nodes 20
    junk["bad-json"] = node_hash(200, report="{not json")
    junk["bad-seen"] = node_hash(201, seen_ms="soon")
    junk["evil\nFORGED"] = node_hash(202)
    junk["x" * 5000] = node_hash(203)
    pipe = client.pipeline()
    for node_id, fields in junk.items():
        pipe.hset(f"spotrelay:node:{node_id}", mapping=fields)
        pipe.sadd("spotrelay:nodes", node_id)
    pipe.set("spotrelay:node:wrong-type", "a string, not a hash")
    pipe.sadd("spotrelay:nodes", "wrong-type")
    pipe.execute()

    config = fleet_config(local.url, ttl_s=15)
    config["registry"]["max_nodes"] = 20
    router = start_router(procs, logdir, config)
    workers = workers_of(router, 2)
    for message in ("[]", '"x"', "{", '{"op": "put", "id": "a", "rev": "x"}',
                    '{"op": "drain", "id": "evil\\nX", "rev": 99999}'):  # fmt: skip
        client.publish("spotrelay:events", message)
        client.publish("spotrelay:events", message)  # a second time: no second log line

    register_node(router.control_url, ROUTER_TOKEN, "real-1", "http://127.0.0.1:9", "sim-model")

    def healthy(nodes: dict[str, dict]) -> bool:
        return "real-1" in nodes and len(nodes) <= 20

    until_every_worker(router, workers, healthy, timeout=15, what="real-1 on every worker")
    for _ in range(10):
        _worker, state, nodes = view(router)
        assert state == "redis", "a junk entry took the shared registry down"
        assert all(valid_node_id(n) for n in nodes), [n[:40] for n in nodes]
        assert "bad-json" not in nodes and "bad-seen" not in nodes
    log = (logdir / "router.log").read_text()
    assert log.count("ignoring node bad-json from the shared registry") == 2, log[-3000:]
    assert log.count("ignoring node bad-seen from the shared registry: seen_ms") == 2
    assert log.count("ignoring node wrong-type from the shared registry: not a node hash") == 2
    assert log.count("ignoring node <message> from the shared registry: not a JSON object") == 2
    assert log.count("ignoring node a from the shared registry: 'rev'") == 2
    assert "Traceback" not in log and "redis down" not in log
