"""Which optional dependencies (pip extras) each subcommand needs, checked before it runs.

A GPU node installs ``spotrelay[agent]``, a router ``spotrelay[router]``; the
CLI that both share lists every subcommand. Running one whose extra is not
installed must say so in one line naming the ``pip install`` to run, not end
in a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib.util

# Import names of each extra's packages (pyproject.toml's optional-dependencies).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "agent": ("urllib3", "psutil", "prometheus_client", "botocore"),
    "router": ("flask", "gunicorn", "gevent", "httptools", "prometheus_client"),
    "deploy": ("python_terraform", "boto3"),
    "sim": ("aiohttp", "openai", "matplotlib", "flask", "gunicorn", "gevent", "psutil"),
}

# The extra each top-level subcommand needs; absent means the base install is enough.
COMMAND_EXTRA: dict[str, str] = {
    "router": "router",
    "agent": "agent",
    "sim": "sim",
    "demo": "sim",
    "up": "deploy",
    "down": "deploy",
    "status": "deploy",
    "preflight": "deploy",
    "scale": "deploy",
}


class MissingExtra(Exception):
    """A subcommand's extra is not installed; the message is the one line to print."""


def missing_modules(extra: str) -> list[str]:
    return [m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]


def message(command: str, extra: str, missing: list[str]) -> str:
    return (
        f"'spotrelay {command}' needs the {extra} extra (missing: {', '.join(missing)}); "
        f"run: pip install 'spotrelay[{extra}]'"
    )


# Actions that only copy packaged files: the base install is enough.
NO_EXTRA_ACTIONS = frozenset({"install-unit"})


def require(command: str, action: str | None = None) -> None:
    """Raise :class:`MissingExtra` if ``command``'s extra is not fully installed."""
    extra = COMMAND_EXTRA.get(command)
    if extra is None or action in NO_EXTRA_ACTIONS:
        return
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(message(command, extra, missing))


def explain_import_error(command: str, exc: ModuleNotFoundError) -> str | None:
    """A one-line hint when a handler failed on a module some extra provides."""
    top = (exc.name or "").split(".")[0]
    for extra, modules in EXTRA_MODULES.items():
        if top in modules:
            return message(command, extra, [top])
    return None
