"""Process control: an interrupt while a child is being spawned still stops that child."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from spotrelay.sim.processes import ManagedProcess, ProcessGroup, _interrupts_deferred


def test_an_interrupt_during_spawn_is_raised_after_the_child_is_registered():
    group = ProcessGroup()

    class InterruptedSpawn(ManagedProcess):
        def start(self) -> ManagedProcess:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands mid-spawn
            return super().start()

    child = InterruptedSpawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(KeyboardInterrupt):
            group.start(child)
        assert child.alive(), "the child started and is known to the group"
    finally:
        group.stop_all(timeout=5)
    assert not child.alive()


def test_signals_keep_their_handlers_outside_the_deferral():
    before = signal.getsignal(signal.SIGTERM)
    with _interrupts_deferred():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
