"""Starting real spotrelay processes (and moto) on loopback for tests.

Every helper takes the test's :class:`ProcessGroup` so the process is stopped
when the test ends, pass or fail. Readiness is polled with a deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spotrelay.sim.loopback import free_port, http_ok
from spotrelay.sim.processes import ManagedProcess, ProcessGroup, spotrelay_argv

HOST = "127.0.0.1"


@dataclass
class Service:
    """A started process and the base URL it serves."""

    proc: ManagedProcess
    url: str
    port: int
    control_url: str = ""  # routers: the control listener (/nodes, /instances, /metrics)


def start_service(
    procs: ProcessGroup,
    logdir: Path,
    name: str,
    args: list[str],
    ready_path: str,
    port: int | None = None,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Service:
    """Run ``spotrelay <args> --port P`` and wait until ``GET ready_path`` is 200."""
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    proc = procs.start(
        ManagedProcess(
            name,
            spotrelay_argv(*args, "--port", str(port)),
            env=env,
            log_path=logdir / f"{name}.log",
        )
    )
    proc.wait_ready(lambda: http_ok(url + ready_path), timeout=timeout)
    return Service(proc, url, port)


def start_sim_vllm(
    procs: ProcessGroup,
    logdir: Path,
    *extra: str,
    model: str = "sim-model",
    name: str = "vllm",
    port: int | None = None,
    api: str = "vllm",
) -> Service:
    """A ``spotrelay sim vllm`` engine serving ``model``.

    ``api="openai"``: no ``/health``, ``/version`` or ``/metrics`` (an engine
    like llama-cpp-python's server); ready once ``/v1/models`` answers.
    """
    return start_service(
        procs,
        logdir,
        name,
        ["sim", "vllm", "--host", HOST, "--model", model, "--api", api, *extra],
        "/health" if api == "vllm" else "/v1/models",
        port=port,
    )


def start_imds(
    procs: ProcessGroup,
    logdir: Path,
    *extra: str,
    name: str = "imds",
    port: int | None = None,
) -> Service:
    """A ``spotrelay sim imds`` emulator (IMDSv2, tokens required).

    Readiness polls the token-free ``GET /_control/health``; metadata paths
    need a token. ``extra`` are CLI flags such as ``--instance-id i-...``.
    """
    return start_service(
        procs,
        logdir,
        name,
        ["sim", "imds", "--host", HOST, *extra],
        "/_control/health",
        port=port,
    )


ROUTER_TOKEN = "test-node-token"


def start_router(
    procs: ProcessGroup,
    logdir: Path,
    config: dict | None = None,
    *extra: str,
    name: str = "router",
    port: int | None = None,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    ttl_s: float | None = 60,
) -> Service:
    """A ``spotrelay router`` (gunicorn, gevent) on loopback, configured by ``config``.

    ``config`` is a router.yaml as a dict (sections as in docs/router.md); it is
    written to ``logdir/<name>.yaml``. Without a node token in it the router
    gets :data:`ROUTER_TOKEN`. Ready when ``GET /healthz`` is 200.
    """
    import yaml

    config = {section: dict(values) for section, values in (config or {}).items()}
    # Tests register nodes by hand, once, with no agent heartbeating them: unless the
    # config says otherwise, nodes must outlive the test (the product's ttl_s, 6 s, is
    # shorter than many). ``ttl_s=None`` keeps the product's default (benchmarks).
    if ttl_s is not None:
        config.setdefault("registry", {}).setdefault("ttl_s", ttl_s)
    auth = config.setdefault("auth", {})
    if not auth.get("node_token") and not auth.get("node_token_file"):
        auth["node_token"] = ROUTER_TOKEN
    # Idle keep-alive connections hold a graceful stop this long: keep teardown quick.
    config.setdefault("server", {}).setdefault("graceful_timeout_s", 1)
    # Never the default control port: tests run in parallel.
    control_port = config["server"].setdefault("control_port", free_port())
    # Some tests (tests/test_silent_nodes.py, tests/test_placement_e2e.py, helpers in
    # tests/resume_fleet.py) still call /nodes and /metrics on the main port: they keep
    # it until they move to ``Service.control_url``. The default (off) is tested in
    # tests/test_router_security.py, whose routers set it explicitly.
    config["server"].setdefault("control_on_main_port", True)
    path = logdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["router", "--config", str(path), "--host", HOST, *extra]
    svc = start_service(procs, logdir, name, args, "/healthz", port=port, timeout=timeout, env=env)
    if control_port:
        svc.control_url = f"http://{HOST}:{control_port}"
    return svc


def register_node(
    router_url: str,
    token: str,
    node_id: str,
    engine_url: str,
    models: str | list[str] | tuple[str, ...],
    state: str = "ready",
    **fields: object,
) -> dict:
    """``PUT /nodes/{node_id}`` on a router; returns its JSON answer, raises on non-2xx.

    ``fields`` adds body keys such as ``load={"running": 1}`` or ``labels={...}``.
    """
    import json
    import urllib.error
    import urllib.request

    body = {
        "url": engine_url,
        "models": [models] if isinstance(models, str) else list(models),
        "state": state,
        **fields,
    }
    req = urllib.request.Request(
        f"{router_url}/nodes/{node_id}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"PUT /nodes/{node_id}: {exc.code} {exc.read().decode()}") from None


@dataclass
class AgentProcess:
    """A started ``spotrelay agent``: its process, config file and /metrics URL."""

    proc: ManagedProcess
    config: Path
    metrics_url: str

    def metric(self, name: str, **labels: str) -> float:
        """The agent's ``name`` sample with these labels (0.0 when absent)."""
        return scrape(self.metrics_url, name, **labels)


def start_agent(
    procs: ProcessGroup,
    logdir: Path,
    config: dict,
    *extra: str,
    name: str = "agent",
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> AgentProcess:
    """A ``spotrelay agent --config <logdir>/<name>.yaml`` subprocess.

    ``config`` is an agent.yaml as a dict; ``metrics.port`` gets a free port
    unless given (readiness = its /metrics answers, i.e. IMDS identity was
    read and every thread started). ``extra`` are CLI flags (``--dry-run``).
    """
    import yaml

    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    metrics = config.setdefault("metrics", {})
    metrics.setdefault("host", HOST)
    metrics.setdefault("port", free_port())
    path = logdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = procs.start(
        ManagedProcess(
            name,
            spotrelay_argv("agent", "--config", str(path), "--log-level", "debug", *extra),
            env=env,
            log_path=logdir / f"{name}.log",
        )
    )
    url = f"http://{metrics['host']}:{metrics['port']}/metrics"
    proc.wait_ready(lambda: http_ok(url), timeout=timeout)
    return AgentProcess(proc, path, url)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's AWS API emulator as a real HTTP server on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def scrape(metrics_url: str, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` at ``metrics_url`` whose labels include ``labels``.

    0.0 when none match: a counter that was never incremented is absent.
    """
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def metric(service_url: str, name: str, **labels: str) -> float:
    """:func:`scrape` of ``<service_url>/metrics``: a router, engine or agent by its base URL."""
    return scrape(f"{service_url}/metrics", name, **labels)


def running(engine: Service) -> float:
    """Requests an engine (``spotrelay sim vllm``) is running now, from its ``/metrics``."""
    return metric(engine.url, "vllm:num_requests_running")


def post_json(url: str, body: dict | None = None) -> dict:
    """``POST`` a JSON body (control APIs); the decoded answer, raising on non-2xx."""
    import json
    import urllib.request

    req = urllib.request.Request(
        url,
        data=json.dumps(body or {}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read() or b"{}")


def router_nodes(router_url: str, token: str = ROUTER_TOKEN) -> dict[str, dict]:
    """The router's ``GET /nodes``, keyed by node id."""
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{router_url}/nodes", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return {n["id"]: n for n in json.load(resp)}


AUTOSCALING_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


def scaling_activities_xml(activities: list[dict]) -> tuple[int, str]:
    """A ``DescribeScalingActivities`` answer (Query protocol) listing ``activities``.

    moto answers that call with an empty list; tests whose subject reads the
    group's launch history answer it from documented activity entries instead.
    """
    import uuid
    from xml.sax.saxutils import escape

    members = "".join(
        "<member>" + "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in a.items()) + "</member>"
        for a in activities
    )
    return 200, (
        f'<DescribeScalingActivitiesResponse xmlns="{AUTOSCALING_NS}">'
        f"<DescribeScalingActivitiesResult><Activities>{members}</Activities>"
        "</DescribeScalingActivitiesResult>"
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        "</DescribeScalingActivitiesResponse>"
    )


class MotoFront:
    """An HTTP front for moto (server mode) where moto lacks an AWS behaviour.

    Every Query-protocol POST is parsed; :meth:`answer` may answer it here (a
    ``(status, xml)`` pair) and :meth:`rewrite` may change its parameters;
    everything else goes to moto unchanged. Subclasses override the two hooks.
    """

    def __init__(self, moto: str) -> None:
        import threading
        import urllib.error
        import urllib.request
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlencode

        self.moto = moto
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                pairs = parse_qs(body.decode(), keep_blank_values=True).items()
                form = {k: v[0] for k, v in pairs}
                answered = front.answer(form)
                if answered is not None:
                    self._reply(answered[0], answered[1].encode(), "text/xml")
                    return
                changed = front.rewrite(form)
                if changed is not form:
                    body = urlencode(changed).encode()
                skip = ("host", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                req = urllib.request.Request(front.moto + self.path, data=body, headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        self._reply(resp.status, resp.read(), resp.headers["Content-Type"])
                except urllib.error.HTTPError as exc:
                    self._reply(exc.code, exc.read(), exc.headers["Content-Type"])

            def _reply(self, status: int, data: bytes, ctype: str | None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype or "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def answer(self, form: dict[str, str]) -> tuple[int, str] | None:
        """Answer the request here instead of moto; None forwards it."""
        return None

    def rewrite(self, form: dict[str, str]) -> dict[str, str]:
        """The parameters to forward (``form`` itself: unchanged)."""
        return form

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
