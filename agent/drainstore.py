"""The drain's state file: ``<state_dir>/drain.json``, written atomically.

The only disk I/O of the drain; :class:`~.drainer.Drainer` calls it for the
machine's :class:`~.drainstate.Persist` and :class:`~.drainstate.ClearState`
effects and once at start-up to restore a drain.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from .drainstate import DrainState

log = logging.getLogger("spotrelay.agent.drain")

STATE_FILE = "drain.json"


def read_boot_id() -> str | None:
    """The kernel's boot id: a state file from an earlier boot is stale.

    A spot instance that was *stopped* (action ``stop``/``hibernate``) comes
    back with the same instance id; its old drain must not keep it out.
    """
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


class StateStore:
    """The state file, written atomically (temp file, fsync, rename); ``path=None``: memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> DrainState | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_text())
            return DrainState.from_json(doc)
        except (OSError, ValueError, TypeError) as exc:
            bad = self.path.with_suffix(".corrupt")
            log.error("unreadable drain state %s (%s); moved to %s", self.path, exc, bad)
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            return None

    def save(self, state: DrainState) -> None:
        if self.path is None or not state.persist:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".drain-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(state.to_json(), fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass

    def clear(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
