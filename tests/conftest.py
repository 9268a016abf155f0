"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spotrelay.core.processes import ProcessGroup


@pytest.fixture
def procs() -> Iterator[ProcessGroup]:
    """Processes the test starts; all stopped at teardown, pass or fail."""
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    """Where started processes write their logs (shown on readiness failures)."""
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """One moto server per test module (AWS state is shared within the module)."""
    from .support import moto_server

    with moto_server() as url:
        yield url
