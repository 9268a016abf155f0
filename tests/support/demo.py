"""``spotrelay demo`` as a real subprocess in a temp folder, and what it leaves behind.

Every process the demo starts inherits its working directory, which is how a
test proves nothing is left behind (also after Ctrl-C).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil


def leftovers(cwd: Path) -> list[str]:
    """Processes still running in ``cwd``: "pid: command line" each."""
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        try:
            if proc.info["cwd"] and Path(proc.info["cwd"]) == cwd:
                found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def start_demo(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``spotrelay demo --no-progress --out out ARGS`` running in ``cwd``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spotrelay.core.cli",
            "demo",
            "--no-progress",
            "--out",
            "out",
            *args,
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def demo_output(proc: subprocess.Popen[str], timeout: float = 200) -> str:
    """Wait for the demo; its stdout if it exited 0, else fail with both streams."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"demo failed:\n{out}\n{err[-4000:]}"
    return out
