"""Running the router under gunicorn, in-process (``spotrelay router`` *is* the master).

One worker process with ``registry.backend: memory`` (the registry lives in
that process's memory); with ``redis`` as many as ``server.workers`` (default:
one per core), each with its own local view kept in step through Redis. Inside
each, gevent greenlets (default) or gthread threads serve requests; the
gevent worker holds hundreds of open streams per process (about 250 at a
50 ms inter-token latency within +5 ms p99 on a 2-core machine; see
docs/benchmarks.md). The app is built in the worker after the fork, so
background upkeep (TTL expiry, health probes, Redis sync) runs where the
registry is.

Monkey patching for gevent is done by the CLI before anything else is
imported (see :mod:`spotrelay.router.cli`); the gevent worker repeats it in
the worker, which is harmless.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from gunicorn.app.base import BaseApplication

from .. import metrics_share
from ..settings import RouterConfig, worker_count
from .httpguard import GuardSettings
from .worker import worker_class

log = logging.getLogger("spotrelay.router")


def guard_settings(cfg: RouterConfig) -> GuardSettings:
    server = cfg.server
    return GuardSettings(
        header_timeout_s=server.header_timeout_s,
        body_timeout_s=server.body_timeout_s,
        max_connections_per_ip=server.max_connections_per_ip,
        exempt_networks=tuple(server.connection_cap_exempt),
        control_port=server.control_port,
        trusted_proxies=tuple(server.trusted_proxies),
        keepalive_s=server.keepalive_s,
        keepalive_min_s=server.keepalive_min_s,
        overload_start=server.overload_start_percent / 100,
        overload_saturation=server.overload_saturation_percent / 100,
    )


def gunicorn_settings(cfg: RouterConfig, log_level: str = "info") -> dict[str, Any]:
    """The gunicorn settings for ``cfg`` (exposed for tests and ``--help`` docs).

    A second bound address (``server.control_port``) gets its own gevent pool
    of ``worker_connections``: clients exhausting the data-plane listener
    cannot take the control plane's connection slots.
    """
    server = cfg.server
    host = f"[{server.host}]" if ":" in server.host else server.host
    bind = [f"{host}:{server.port}"]
    if server.control_port:
        bind.append(f"{host}:{server.control_port}")
    return {
        "bind": bind,
        "workers": worker_count(cfg),
        "worker_class": worker_class(server.worker_class, guard_settings(cfg)),
        "threads": server.threads,
        "worker_connections": server.worker_connections,
        "keepalive": max(0, round(server.keepalive_s)),
        "graceful_timeout": max(1, round(server.graceful_timeout_s)),
        "timeout": 30,  # worker heartbeat; the gevent worker notifies every second
        "backlog": 2048,
        "accesslog": None,  # the proxy logs one line per request itself, with its request id
        "errorlog": "-",
        "loglevel": log_level,
        "proc_name": "spotrelay-router",
        # Gunicorn >= 25.1 opens a control socket that can change the worker count;
        # with the memory registry that would split the fleet, so it stays off.
        "control_socket_disable": True,
    }


class RouterApplication(BaseApplication):
    def __init__(self, cfg: RouterConfig, node_token: str, log_level: str = "info") -> None:
        self.router_cfg = cfg
        self.node_token = node_token
        self.log_level = log_level
        # Several workers: one /metrics for all of them (metrics_share says why), set up
        # here in the master, before any worker (or metric) exists.
        self.metrics_dir = None
        if worker_count(cfg) > 1:  # systemd's RuntimeDirectory= when set: /tmp is aged out
            self.metrics_dir = metrics_share.prepare(os.environ.get("RUNTIME_DIRECTORY"))
        super().__init__(prog="spotrelay router")

    def load_config(self) -> None:
        for key, value in gunicorn_settings(self.router_cfg, self.log_level).items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        if self.metrics_dir is not None:
            directory = self.metrics_dir

            def child_exit(_arbiter: Any, worker: Any) -> None:
                metrics_share.worker_exited(directory, worker.pid)

            self.cfg.set("child_exit", child_exit)
            self.cfg.set("on_exit", lambda _arbiter: metrics_share.remove(directory))

    def load(self) -> Any:
        from ..app import create_app
        from ..service import RouterService

        service = RouterService(self.router_cfg, self.node_token, metrics_dir=self.metrics_dir)
        service.start()
        server = self.router_cfg.server
        log.info(
            "router ready on %s:%s, control plane on %s (worker %s, %s, registry %s, ttl %.1fs)",
            server.host,
            server.port,
            server.control_port or "the main port only",
            server.worker_class,
            service.router_id,
            self.router_cfg.registry.backend,
            self.router_cfg.registry.ttl_s,
        )
        app = create_app(service)
        tune_gc()
        return app


def tune_gc() -> None:
    """Fewer garbage-collector passes on the request path.

    Every proxied request allocates a few hundred short-lived objects, so with
    CPython's default threshold (700) the cyclic collector runs every couple
    of requests and now and then walks the whole heap. Freezing what exists
    after start-up (modules, the app) and collecting the young generation
    every 50,000 allocations cut the router's CPU per request by about a fifth
    in ``bench/router_bench.py`` (509 -> 404 us) without changing stream
    gaps. Reference counting still frees almost everything immediately.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def serve(cfg: RouterConfig, node_token: str, log_level: str = "info") -> int:
    """Run until SIGTERM/SIGINT; gunicorn exits the process itself."""
    RouterApplication(cfg, node_token, log_level).run()
    return 0
