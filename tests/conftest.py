"""Fixtures shared by every test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from spotrelay.sim.processes import ProcessGroup

from .support import Service, start_router
from .support.aws import ScriptedAws, aws_env

# Property tests explore new random examples on every developer run; CI (CI=true)
# draws the same examples every time, so a red CI names a change, not a dice roll.
# A failure found locally prints the example to turn into a plain test.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


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


@pytest.fixture
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test credentials in this process's environment (boto3 and botocore in the test)."""
    for key, value in aws_env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def scripted_aws() -> Iterator[ScriptedAws]:
    """A scripted Auto Scaling endpoint that checks each call against botocore's model."""
    with ScriptedAws() as server:
        yield server


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One router for the test module (a module may define its own ``router`` instead).

    Tests sharing it register nodes under their own model names, so they never
    route to each other's nodes.
    """
    group = ProcessGroup()
    try:
        yield start_router(group, tmp_path_factory.mktemp("router-logs"))
    finally:
        group.stop_all()


@pytest.fixture
def moto_url() -> Iterator[str]:
    """A fresh moto server per test: each deploy test starts from an empty account.

    moto's backends are process-global, so a new server alone would still see
    what earlier tests created: its reset API empties them first.
    """
    import urllib.request

    from .support import moto_server

    with moto_server() as url:
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
        yield url
