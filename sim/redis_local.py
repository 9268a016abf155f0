"""A throwaway local ``redis-server`` (or ``valkey-server``) for the demo and the tests.

Bound to loopback, no persistence, on a port of our choosing: what the
routers' shared registry needs on a laptop, and nothing an operator would run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .loopback import free_port
from .processes import ManagedProcess, ProcessGroup

HOST = "127.0.0.1"
BINARIES = ("redis-server", "valkey-server")


class NoRedisServer(RuntimeError):
    """Neither redis-server nor valkey-server is on PATH."""


@dataclass
class LocalRedis:
    proc: ManagedProcess
    port: int
    binary: str  # the server it runs: a restart on ``port`` must start the same one

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


def server_binary() -> str:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    raise NoRedisServer(
        "no redis-server or valkey-server on PATH: install one "
        "(Debian/Ubuntu: apt-get install redis-server) or pass --redis redis://HOST:PORT"
    )


def ping(url: str) -> bool:
    """Whether a server answers at ``url`` (one that wants a password counts)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.ResponseError, redis.AuthenticationError):  # up, just not for us
        return True
    except (redis.RedisError, OSError):
        return False


def start_local_redis(
    procs: ProcessGroup,
    logdir: Path,
    *,
    port: int | None = None,
    name: str = "redis",
    extra: tuple[str, ...] = (),
    ready: Callable[[], bool] | None = None,
    binary: str | None = None,
) -> LocalRedis:
    """Start one on ``port`` (a free one by default) and wait until it answers PING.

    ``extra`` are more server arguments, e.g. ACL users (``--user ...``) or TLS
    ones, which then need their own ``ready`` check. ``binary`` picks the
    server (e.g. a ``valkey-server``); by default the first on PATH.
    """
    port = port or free_port()
    binary = binary or server_binary()
    argv = [
        binary,
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        *extra,
    ]  # fmt: skip
    proc = procs.start(ManagedProcess(name, argv, log_path=logdir / f"{name}.log"))
    local = LocalRedis(proc, port, binary)
    proc.wait_ready(ready or (lambda: ping(local.url)), timeout=15)
    return local
