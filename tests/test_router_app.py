"""The Flask routes (Flask's test client, fake nodes) and the ``spotrelay router`` CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess

import pytest

from spotrelay.router.transport.server import gunicorn_settings
from spotrelay.sim.processes import spotrelay_argv
from tests.support.router_client import AUTH, TOKEN, client_for, openai_error_of, put
from tests.support.router_fakes import A, FakeResp, answering, fast_config, report


@pytest.fixture
def client():
    c, svc, fleet = client_for()
    c.svc, c.fleet = svc, fleet
    return c


# -- control plane ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
def test_every_control_plane_call_needs_the_token(client, headers):
    put(client)
    calls = [
        client.get("/nodes", headers=headers),
        put(client, headers=headers),
        client.post("/nodes/a/drain", headers=headers),
        client.delete("/nodes/a", headers=headers),
    ]
    for resp in calls:
        assert resp.status_code == 401
        assert isinstance(resp.get_json()["error"], str)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert client.svc.registry.get("a").status == "ready", "nothing changed"


def test_register_list_drain_delete(client):
    resp = put(client)
    assert resp.status_code == 200
    assert resp.get_json() == {
        "id": "a", "url": A, "state": "ready", "registered": True, "in_flight": 0, "ttl_s": 6
    }  # fmt: skip
    assert put(client).get_json()["registered"] is False
    nodes = client.get("/nodes", headers=AUTH).get_json()
    assert [n["id"] for n in nodes] == ["a"]
    assert {"state", "load", "in_flight", "failures", "ejection", "models", "url"} <= set(nodes[0])
    drained = client.post("/nodes/a/drain", headers=AUTH)
    assert drained.status_code == 200 and drained.get_json()["in_flight"] == 0
    assert client.get("/nodes", headers=AUTH).get_json()[0]["state"] == "draining"
    assert client.delete("/nodes/a", headers=AUTH).status_code == 200
    assert client.get("/nodes", headers=AUTH).get_json() == []
    assert client.delete("/nodes/a", headers=AUTH).status_code == 404
    assert client.post("/nodes/a/drain", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    "node_id, body, message",
    [
        ("a", b"{not json", "not valid JSON"),
        ("a", b"[]", "JSON object"),
        ("a", b"[" * 5000 + b"]" * 5000, "not valid JSON"),
        ("a", json.dumps({"models": ["m"]}).encode(), "'url'"),
        ("a", json.dumps({"url": A, "models": []}).encode(), "'models'"),
        ("a", json.dumps({"url": A, "models": ["m"], "state": "zombie"}).encode(), "'state'"),
        ("a", json.dumps({"url": A, "models": ["m"], "load": {"running": "x"}}).encode(), "load"),
        ("bad%20id", json.dumps(report(A)).encode(), "node id"),
        ("a", json.dumps(report("http://169.254.169.254")).encode(), "always refused"),
        ("a", json.dumps(report("http://8.8.8.8:8000")).encode(), "allowed_networks"),
        ("a", json.dumps(report("file:///etc/passwd")).encode(), "scheme"),
        ("a", json.dumps(report("http://[fe80::1]:80")).encode(), "always refused"),
        # registration limits: metric label values, log fields, JSON of every GET /nodes
        ("a", json.dumps({"url": A, "models": ["m" * 60_000]}).encode(), "1-256 printable"),
        ("a", json.dumps({"url": A, "models": ["evil\nFORGED"]}).encode(), "'models' entry"),
        ("a", json.dumps({"url": A, "models": [f"m{i}" for i in range(65)]}).encode(), "at most"),
        ("a", json.dumps(report(A, labels={"k" * 65: "v"})).encode(), "label key"),
        ("a", json.dumps(report(A, labels={"az": "x" * 257})).encode(), "label 'az'"),
        ("a", json.dumps(report(A, labels={"az": "a\u202eb"})).encode(), "printable"),
        ("a", json.dumps(report(A, labels={"az": {"nested": 1}})).encode(), "a string"),
    ],
)
def test_bad_registrations_are_400_with_a_reason(client, node_id, body, message):
    resp = client.put(f"/nodes/{node_id}", data=body, headers=AUTH)
    assert resp.status_code == 400
    assert message in resp.get_json()["error"]
    assert client.get("/nodes", headers=AUTH).get_json() == []


def test_oversized_registration_is_413(client):
    body = json.dumps(report(A, labels={"x": "y" * 70_000})).encode()
    assert client.put("/nodes/a", data=body, headers=AUTH).status_code == 413


# -- data plane ------------------------------------------------------------------------------


def test_completion_is_proxied_with_request_id(client):
    put(client)
    client.fleet.behaviour[A] = answering(lambda: FakeResp(200, b'{"choices": []}'))
    resp = client.post(
        "/v1/completions", json={"model": "m", "prompt": "x"}, headers={"X-Request-ID": "abc-1"}
    )
    assert resp.status_code == 200 and resp.get_json() == {"choices": []}
    assert resp.headers["X-Request-ID"] == "abc-1"
    assert client.fleet.calls[0]["headers"]["X-Request-ID"] == "abc-1"
    assert client.fleet.calls[0]["url"] == "/v1/completions"
    resp = client.post("/v1/completions", json={"model": "m", "prompt": "x"})
    generated = resp.headers["X-Request-ID"]
    assert len(generated) == 32 and client.fleet.calls[1]["headers"]["X-Request-ID"] == generated
    bad = client.post(
        "/v1/completions", json={"model": "m"}, headers={"X-Request-ID": "bad id\twith junk"}
    )
    assert bad.headers["X-Request-ID"] != "bad id\twith junk"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_every_inference_path_is_routed(client, path):
    put(client)
    client.post(path, json={"model": "m", "input": "x"})
    assert client.fleet.calls[-1]["url"] == path


@pytest.mark.parametrize(
    "body, status, code_or_param",
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"model": 7}', 400, "model"),
        (b'{"model": ""}', 400, "model"),
        (b'{"model": "nope"}', 404, "model_not_found"),
    ],
)
def test_bad_requests_get_openai_shaped_4xx(client, body, status, code_or_param):
    put(client)
    resp = client.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == status
    err = openai_error_of(resp)
    assert code_or_param in (err["code"], err["param"])
    assert client.fleet.calls == []


def test_body_limit_by_content_length_and_while_reading_chunked():
    client, _svc, fleet = client_for(routing={"max_body_bytes": 1000})
    put(client)
    big = json.dumps({"model": "m", "prompt": "x" * 2000}).encode()
    resp = client.post("/v1/completions", data=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and openai_error_of(resp)["code"] == "body_too_large"
    # No Content-Length (chunked upload): the limit applies while reading.
    resp = client.post(
        "/v1/completions",
        input_stream=io.BytesIO(big),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert resp.status_code == 413
    small = json.dumps({"model": "m", "prompt": "ok"}).encode()
    resp = client.post(
        "/v1/completions",
        input_stream=io.BytesIO(small),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert resp.status_code == 200
    assert fleet.calls[-1]["body"] == small


def test_wrong_method_and_unknown_path(client):
    resp = client.get("/v1/completions")
    assert resp.status_code == 405 and openai_error_of(resp)["type"] == "invalid_request_error"
    assert "POST" in resp.headers["Allow"]
    resp = client.get("/v1/nothing")
    assert resp.status_code == 404 and "no such endpoint" in openai_error_of(resp)["message"]


def test_api_keys_when_configured():
    client, _svc, fleet = client_for(auth={"api_keys": ["k1", "k2"]})
    put(client)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {TOKEN}"}):
        resp = client.post("/v1/completions", json={"model": "m"}, headers=headers)
        assert resp.status_code == 401
        assert openai_error_of(resp)["code"] == "invalid_api_key"
        assert client.get("/v1/models", headers=headers).status_code == 401
    assert fleet.calls == []
    ok = client.post("/v1/completions", json={"model": "m"}, headers={"Authorization": "Bearer k2"})
    assert ok.status_code == 200
    assert "Authorization" not in fleet.calls[0]["headers"], "client keys never go upstream"


def test_models_is_the_union_of_ready_nodes(client):
    put(client, "a", A, models=("m1", "m2"))
    put(client, "b", "http://10.0.0.2:8000", models=("m2", "m3"))
    put(client, "c", "http://10.0.0.3:8000", models=("m4",), state="draining")
    doc = client.get("/v1/models").get_json()
    assert doc["object"] == "list"
    assert [m["id"] for m in doc["data"]] == ["m1", "m2", "m3"]
    assert all(m["object"] == "model" for m in doc["data"])


def test_ops_endpoints(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    put(client)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["nodes"]["ready"] == 1
    client.fleet.behaviour[A] = answering(lambda: FakeResp(200, b"{}"))
    client.post("/v1/completions", json={"model": "m"})
    client.post("/v1/completions", data=b"{oops")
    client.post("/v1/completions", json={"model": "not-served"})
    text = client.get("/metrics").get_data(as_text=True)
    for name in (
        'spotrelay_router_requests_total{model="none",status="400"} 1.0',
        'spotrelay_router_requests_total{model="other",status="404"} 1.0',
        'spotrelay_router_requests_total{model="m",status="200"} 1.0',
        'spotrelay_router_nodes{state="ready"} 1.0',
        # by model and purchase option; node events exist at 0 so a first expiry is an increase
        'spotrelay_router_model_nodes{lifecycle="unknown",model="m",state="ready"} 1.0',
        'spotrelay_router_node_events_total{event="expired"} 0.0',
        'spotrelay_router_node_in_flight{node="a",state="ready"} 0.0',
        'spotrelay_router_upstream_attempts_total{outcome="ok"} 1.0',
        "spotrelay_router_upstream_latency_seconds_bucket",
        "spotrelay_router_ttft_seconds_bucket",
        "spotrelay_router_retries_total",
        "spotrelay_router_ejections_total",
    ):
        assert name in text, name
    # The embedded registry is always "up"; with redis the gauge follows the link.
    assert 'spotrelay_router_registry_backend_up{backend="memory"} 1.0' in text


def test_gunicorn_settings_are_one_worker_without_control_socket():
    cfg = fast_config(server={"host": "::", "port": 9000, "keepalive_s": 75.4})
    settings = gunicorn_settings(cfg)
    assert settings["workers"] == 1 and settings["bind"] == ["[::]:9000", "[::]:8081"]
    assert settings["worker_class"].__name__ == "SpotrelayGeventWorker"
    assert settings["worker_class"].guard.control_port == 8081
    assert settings["keepalive"] == 75
    assert settings["control_socket_disable"] is True
    no_control = fast_config(server={"port": 9000, "control_port": 0, "worker_class": "gthread"})
    settings = gunicorn_settings(no_control)
    assert settings["bind"] == ["0.0.0.0:9000"]
    assert settings["worker_class"].__name__ == "SpotrelayThreadWorker"
    shared = fast_config(registry={"backend": "redis", "redis_url": "redis://cache:6379/0"})
    assert gunicorn_settings(shared)["workers"] == len(os.sched_getaffinity(0))
    shared.server.workers = 3
    assert gunicorn_settings(shared)["workers"] == 3


# -- CLI: configuration errors are one line, exit 2 ------------------------------------------


def run_cli(tmp_path, yaml_text, env=None, *args):
    path = tmp_path / "router.yaml"
    path.write_text(yaml_text)
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTRELAY_")} | (env or {})
    return subprocess.run(
        spotrelay_argv("router", "--config", str(path), *args),
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


@pytest.mark.parametrize(
    "yaml_text, env, message",
    [
        ("server: {workers: 2}\nauth: {node_token: t}\n", {},
         "server.workers = 2: must be 1 with registry.backend memory"),
        ("auth: {node_token: t}\nregistry: {backend: redis, redis_url: 'redis://:pw@h:x'}\n", {},
         "registry.redis_url = 'redis://:<redacted>@h:x': malformed"),
        ("auth: {node_token: t}\nregistry: {backend: redis, redis_url: 'redis://h',"
         " redis_password_file: /etc}\n", {}, "registry.redis_password_file = '/etc': cannot read"),
        ("auth: {node_token: t}\nregistry: {backend: redis, redis_url: 'redis://h',"
         " redis_password_file: /nonexistent/auth}\n", {},
         "registry.redis_password_file = '/nonexistent/auth': no such file"),
        ("auth: {node_token: t}\n", {"SPOTRELAY_SERVER_WORKERS": "3"},
         "server.workers = 3: must be 1"),
        ("auth: {node_token: null, node_token_file: /nonexistent/token}\n", {},
         "auth.node_token: no node token"),
        ("auth: {node_token: t}\nregistry: {allowed_networks: [not-a-cidr]}\n", {},
         "registry.allowed_networks[0]"),
        ("auth: {node_token: t}\nserver: {worker_class: sync}\n", {}, "server.worker_class"),
    ],
)  # fmt: skip
def test_config_errors_are_one_line(tmp_path, yaml_text, env, message):
    result = run_cli(tmp_path, yaml_text, env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_token_from_file_and_help(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("")
    result = run_cli(tmp_path, f"auth: {{node_token_file: {token_file}}}\n")
    assert result.returncode == 2 and "file is empty" in result.stderr
    help_text = subprocess.run(
        spotrelay_argv("router", "--help"), capture_output=True, text=True, timeout=60
    ).stdout
    for key in ("server.workers", "SPOTRELAY_AUTH_NODE_TOKEN", "routing.no_capacity_wait_s"):
        assert key in help_text


# -- shipped files -----------------------------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_example_config_loads_and_matches_the_defaults():
    from spotrelay.core.config import load
    from spotrelay.router.settings import RouterConfig

    example = load(RouterConfig, REPO / "router" / "examples" / "router.yaml", env={})
    assert example == load(RouterConfig, None, env={}), "the example documents the defaults"


def test_systemd_unit(tmp_path):
    unit = (REPO / "router" / "systemd" / "spotrelay-router.service").read_text()
    assert (
        "ExecStart=/opt/spotrelay/venv/bin/spotrelay router --config /etc/spotrelay/router.yaml"
        in unit
    )
    assert "LoadCredential=node-token:/etc/spotrelay/node-token" in unit
    assert "Environment=SPOTRELAY_AUTH_NODE_TOKEN_FILE=%d/node-token" in unit
    from tests.tfshim import tfcheck

    problems = tfcheck.unit_problems({"spotrelay-router.service": unit}, tmp_path)
    if problems is None:
        pytest.skip("systemd-analyze is not installed")
    assert problems == []
