"""``spotrelay router``: the OpenAI-compatible router, served by gunicorn.

Top-level imports stay light (the whole ``spotrelay`` CLI imports this
module); gunicorn, gevent and Flask load only when the router runs,
after gevent's monkey patching.
"""

from __future__ import annotations

import argparse
import os

from spotrelay.core.cli import add_command
from spotrelay.core.config_flags import Flag, overrides
from spotrelay.core.units_cli import add_install_unit_options, install_unit

DESCRIPTION = """\
Run the router: OpenAI-compatible /v1/* routed to registered vLLM nodes, with
retries before the first byte, and /healthz, /readyz on server.port; the node
control plane (/nodes, /instances, node token) and /metrics on their own
listener (server.control_port, default 8081; on server.port too only with
server.control_on_main_port). With registry.backend
memory (default), one gunicorn worker process; with redis, one per core
sharing the registry. gevent greenlets inside each. See docs/router.md."""

FLAGS = {
    "host": Flag("server.host", "address to bind (beats server.host)"),
    "port": Flag("server.port", "port to bind (beats server.port)", type=int),
    "control_port": Flag(
        "server.control_port",
        "control-plane listener port, 0 for none (beats server.control_port)",
        type=int,
    ),
}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from .settings import RouterConfig

    p = add_command(
        sub,
        common,
        "router",
        help="run the router (gunicorn; one worker, or one per core with a Redis registry)",
        description=DESCRIPTION,
        config=RouterConfig,
        flags=FLAGS,
        handler=run,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["run", "install-unit"],
        default="run",
        help="run the router (default), or install its systemd unit and example config "
        "from the package",
    )
    add_install_unit_options(p)


def load_config(args: argparse.Namespace):  # -> tuple[RouterConfig, str]
    """The validated configuration and node token; ConfigError (one line) otherwise."""
    from spotrelay.core.config import ConfigError, load
    from spotrelay.core.secrets import read_token

    from .settings import RouterConfig

    cfg = load(RouterConfig, args.config, overrides=overrides(args, FLAGS))
    token = read_token(cfg.auth.node_token, cfg.auth.node_token_file, "auth.node_token")
    if not token:
        raise ConfigError(
            "auth.node_token",
            "no node token: set auth.node_token (or SPOTRELAY_AUTH_NODE_TOKEN) or put it in "
            f"auth.node_token_file ({cfg.auth.node_token_file}); the control plane is never open",
        )
    reg = cfg.registry
    if reg.backend == "redis":
        file = reg.redis_password_file
        if not reg.redis_password and file and not os.path.exists(file):
            raise ConfigError(
                "registry.redis_password_file", "no such file", reg.redis_password_file
            )
        if reg.redis_ca_file and not os.path.exists(reg.redis_ca_file):
            raise ConfigError("registry.redis_ca_file", "no such file", reg.redis_ca_file)
        reg.redis_password = read_token(
            reg.redis_password, reg.redis_password_file, "registry.redis_password"
        )
    return cfg, token


def run(args: argparse.Namespace) -> int:
    if args.action == "install-unit":
        return install_unit("router", args)
    cfg, token = load_config(args)
    if cfg.server.worker_class == "gevent":
        # Once, first, before gunicorn/Flask/ssl are imported: everything after
        # this sees cooperative sockets. The worker's own patch_all is then a no-op.
        from gevent import monkey

        monkey.patch_all()
    from .transport.server import serve

    return serve(cfg, token, log_level=args.log_level)
