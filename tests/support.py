"""Starting real spotrelay processes on loopback for tests (and nothing else).

Every helper takes the test's :class:`ProcessGroup` so the process is stopped
when the test ends, pass or fail. Readiness is polled with a deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spotrelay.core.net import free_port, http_ok
from spotrelay.core.processes import ManagedProcess, ProcessGroup, spotrelay_argv

HOST = "127.0.0.1"


@dataclass
class Service:
    """A started process and the base URL it serves."""

    proc: ManagedProcess
    url: str
    port: int


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
) -> Service:
    """A ``spotrelay sim vllm`` engine serving ``model``."""
    return start_service(
        procs,
        logdir,
        name,
        ["sim", "vllm", "--host", HOST, "--model", model, *extra],
        "/health",
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
