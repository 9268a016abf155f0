"""Config loading: precedence, coercion and one-line errors naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotrelay.agent.settings import AgentConfig
from spotrelay.core.config import ConfigError, describe, load, redacted
from spotrelay.router.settings import RouterConfig, worker_count


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_documented_ones() -> None:
    cfg = load(RouterConfig, env={})
    assert cfg.server.port == 8080 and worker_count(cfg) == 1
    assert cfg.registry.backend == "memory"
    assert cfg.registry.ttl_s == 6
    assert cfg.hedge.stall_floor_s == 1.5 and cfg.hedge.stall_multiple == 8
    assert cfg.retry.max_attempts == 3 and cfg.retry.budget_percent == 20
    assert cfg.resume.enabled is True and cfg.resume.max_attempts == 2
    agent = load(AgentConfig, env={})
    assert agent.imds.url == "http://169.254.169.254" and agent.imds.poll_interval_s == 1
    assert agent.drain.on_rebalance is False and agent.state_dir == "/var/lib/spotrelay"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 9000, host: 127.0.0.1}\nretry: {max_attempts: 2}\n")
    env = {"SPOTRELAY_SERVER_PORT": "9100", "SPOTRELAY_ROUTER_URLS": "ignored"}
    cfg = load(RouterConfig, path, env=env, overrides={"server": {"port": 9200, "host": None}})
    assert cfg.server.port == 9200
    assert cfg.server.host == "127.0.0.1"
    assert cfg.retry.max_attempts == 2
    cfg = load(RouterConfig, path, env=env)
    assert cfg.server.port == 9100


def test_env_lists_and_top_level_keys() -> None:
    env = {
        "SPOTRELAY_ROUTER_URLS": "http://a:1, http://b:2",
        "SPOTRELAY_STATE_DIR": "/tmp/x",
        "SPOTRELAY_DRAIN_ON_REBALANCE": "yes",
        "SPOTRELAY_ROUTER_NODE_TOKEN": "s3cret",
    }
    cfg = load(AgentConfig, env=env)
    assert cfg.router.urls == ["http://a:1", "http://b:2"]
    assert cfg.state_dir == "/tmp/x" and cfg.drain.on_rebalance is True
    assert redacted(cfg)["router"]["node_token"] == "<redacted>"


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ("server: {port: abc}\n", {}, "server.port = 'abc': expected an integer"),
        ("server: {prot: 1}\n", {}, "server.prot: unknown key"),
        (
            "server: {workers: 4}\n",
            {},
            "server.workers = 4: must be 1 with registry.backend memory",
        ),
        ("registry: {backend: redis}\n", {}, "registry.redis_url: required with registry.backend"),
        (
            "registry: {backend: redis, redis_url: 'http://h:1'}\n",
            {},
            "registry.redis_url = 'http://h:1': scheme",
        ),
        (
            "registry: {backend: redis, redis_url: 'redis://u:pw@h:99999'}\n",
            {},
            "registry.redis_url = 'redis://u:<redacted>@h:99999': malformed",
        ),
        (
            "registry: {backend: redis, redis_url: 'redis://'}\n",
            {},
            "registry.redis_url = 'redis://': has no host",
        ),
        (
            "registry: {backend: redis, redis_url: 'rediss://h/x'}\n",
            {},
            "database must be a number",
        ),
        (
            "registry: {backend: etcd}\n",
            {},
            "registry.backend = 'etcd': must be one of memory, redis",
        ),
        ("retry: {max_attempts: 0}\n", {}, "retry.max_attempts = 0: must be >= 1"),
        ("server: [1, 2]\n", {}, "server"),
        ("server: {port: 80\n", {}, "invalid YAML"),
        ("", {"SPOTRELAY_TIMEOUTS_CONNECT_S": "soon"}, "SPOTRELAY_TIMEOUTS_CONNECT_S = 'soon'"),
        ("", {"SPOTRELAY_RETRY_MAX_ATTEMPTS": "0"}, "retry.max_attempts = 0: must be >= 1"),
        ("registry: {allowed_networks: [10.0.0.0/33]}\n", {}, "registry.allowed_networks[0]"),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(RouterConfig, write(tmp_path, text), env=env)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_workers_follow_the_registry_backend(tmp_path: Path) -> None:
    """memory: exactly one worker; redis: as configured, else one per core."""
    redis = "registry: {backend: redis, redis_url: 'rediss://app:secret@cache:6380/2'}\n"
    cfg = load(RouterConfig, write(tmp_path, redis), env={})
    assert worker_count(cfg) == len(os.sched_getaffinity(0))
    cfg = load(RouterConfig, write(tmp_path, redis + "server: {workers: 3}\n"), env={})
    assert worker_count(cfg) == 3
    assert redacted(cfg)["registry"]["redis_url"] == "<redacted>"
    cfg = load(RouterConfig, write(tmp_path, "server: {workers: 1}\n"), env={})
    assert worker_count(cfg) == 1


def test_describe_lists_env_names() -> None:
    text = describe(RouterConfig)
    assert "SPOTRELAY_AUTH_NODE_TOKEN" in text and "retry.budget_percent" in text


def test_cli_help_lists_every_component() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "spotrelay.core.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("router", "agent", "sim", "demo", "up", "down", "status"):
        assert command in out
