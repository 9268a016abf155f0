"""Starting and reliably stopping child processes (demo fleet, tests, benchmarks).

Each child gets its own session so that stopping it also stops anything it
spawned (gunicorn workers, an engine under an agent). ``stop`` escalates from
SIGTERM to SIGKILL, and :class:`ProcessGroup` stops everything it started even
when the caller is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from .loopback import wait_until


def spotrelay_argv(*args: str) -> list[str]:
    """argv that runs the ``spotrelay`` CLI of this very interpreter."""
    return [sys.executable, "-m", "spotrelay.core.cli", *args]


class ManagedProcess:
    """One child process with its output sent to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log if self._log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def wait_ready(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll ``check`` until true; fail early with the log tail if the child died."""

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.returncode()}:\n{self.tail()}")
            return check()

        try:
            wait_until(ready, timeout=timeout, what=f"{self.name} to become ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.tail()}") from None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a spot reclaim, not a shutdown."""
        self.signal(signal.SIGKILL)
        self._reap(5.0)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            # A frozen (SIGSTOPped) process only sees the SIGTERM once continued.
            self.signal(signal.SIGCONT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        self._reap(5.0)
        return self.proc.returncode

    def _reap(self, timeout: float) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
            # Children of the group (e.g. gunicorn workers) must not outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class ProcessGroup:
    """Everything one harness started; a context manager that stops them all."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def start(self, proc: ManagedProcess) -> ManagedProcess:
        self.processes.append(proc)
        with _interrupts_deferred():
            return proc.start()

    def stop_all(self, timeout: float = 10.0) -> None:
        for proc in reversed(self.processes):
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in reversed(self.processes):
            proc.stop(max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM handlers back while a child is being spawned.

    A KeyboardInterrupt raised inside ``subprocess.Popen`` after the fork
    leaves a running child whose pid nobody recorded, so ``stop_all`` cannot
    stop it. The signal is recorded here and its handler run once the child
    is registered. (Signal handlers can only be changed in the main thread;
    other threads spawn as before.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda n, f: caught.append((n, f))) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # None: a handler not installed from Python, which cannot be put back.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum, frame in caught[:1]:
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)
            elif handler in (signal.SIG_DFL, None):
                signal.raise_signal(signum)
