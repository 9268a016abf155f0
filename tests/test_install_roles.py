"""Installs per role: the built wheel in fresh virtualenvs, as a GPU node and a bare host get it.

These tests build the wheel once (``python -m build``, as ``make dist`` does)
and install it into new virtualenvs from PyPI (pip's cache makes a rerun
quick). They prove what a user of each role sees, not what the package
metadata claims: an ``[agent]`` install runs the agent and its check against
the IMDS emulator, carries none of the router's or the simulator's
dependencies, and a subcommand whose extra is missing says so in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from spotrelay.sim.processes import ProcessGroup

from .support import ROUTER_TOKEN, Service, start_imds, start_router, start_sim_vllm

REPO = Path(__file__).resolve().parents[1]
# What only the router, the simulator or the deploy tooling need: never on a GPU node.
NOT_ON_A_NODE = (
    "flask",
    "gunicorn",
    "gevent",
    "httptools",
    "redis",
    "matplotlib",
    "numpy",
    "openai",
    "pydantic",
    "aiohttp",
    "boto3",
    "requests",
    "python-terraform",
    "rich",
)


def _run(argv: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)])
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # Package-data and metadata warnings are ours to fix; byte-compiling is the
    # environment's (PYTHONDONTWRITEBYTECODE).
    warnings = [
        line
        for line in (built.stdout + built.stderr).splitlines()
        if "warning" in line.lower() and "byte-compiling is disabled" not in line
    ]
    assert not warnings, warnings
    (whl,) = out.glob("spotrelay-*.whl")
    return whl


class Env:
    """A fresh virtualenv with the wheel installed with some extras."""

    def __init__(self, root: Path, wheel: Path, extras: str) -> None:
        venv.EnvBuilder(with_pip=True).create(root)
        self.bin = root / "bin"
        spec = f"{wheel}[{extras}]" if extras else str(wheel)
        done = _run([str(self.bin / "pip"), "install", "--quiet", spec])
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def spotrelay(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run([str(self.bin / "spotrelay"), *args], timeout=timeout)

    def installed(self) -> set[str]:
        out = _run([str(self.bin / "pip"), "list", "--format", "json"])
        return {p["name"].lower().replace("_", "-") for p in json.loads(out.stdout)}


@pytest.fixture(scope="module")
def agent_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("agent-venv"), wheel, "agent")


@pytest.fixture(scope="module")
def module_procs() -> Iterator[ProcessGroup]:
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all()


def test_agent_install_has_nothing_of_the_router_or_simulator(agent_env: Env) -> None:
    installed = agent_env.installed()
    assert {"spotrelay", "urllib3", "psutil", "prometheus-client", "botocore"} <= installed
    assert not installed & set(NOT_ON_A_NODE), installed & set(NOT_ON_A_NODE)


def test_agent_install_runs_agent_help_and_check_against_the_imds_emulator(
    agent_env: Env, module_procs: ProcessGroup, tmp_path: Path
) -> None:
    help_out = agent_env.spotrelay("agent", "--help")
    assert help_out.returncode == 0, help_out.stderr
    assert "imds.url" in help_out.stdout

    imds = start_imds(module_procs, tmp_path, "--instance-id", "i-0wheel000000001")
    engine = start_sim_vllm(module_procs, tmp_path, model="m-wheel")
    router: Service = start_router(module_procs, tmp_path)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "router": {"urls": [router.control_url], "node_token": ROUTER_TOKEN},
                "engine": {"url": engine.url, "model": "m-wheel", "systemd_unit": None},
                "imds": {"url": imds.url},
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    check = agent_env.spotrelay("agent", "check", "--config", str(cfg), "--json")
    assert check.returncode in (0, 1), check.stderr  # 1: not registered yet, not a crash
    assert "Traceback" not in check.stderr
    doc = json.loads(check.stdout)
    assert doc["imds"]["instance_id"] == "i-0wheel000000001"
    assert doc["engine"]["serves"]
    assert doc["routers"][0]["auth"] == "ok"


def test_a_command_whose_extra_is_missing_names_the_pip_install(agent_env: Env) -> None:
    for command, extra in (("router", "router"), ("demo", "sim"), ("status", "deploy")):
        out = agent_env.spotrelay(command)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert f"pip install 'spotrelay[{extra}]'" in lines[0]


def test_installed_files_list_units_and_configs_and_install_unit_places_them(
    agent_env: Env, tmp_path: Path
) -> None:
    shown = _run([str(agent_env.bin / "pip"), "show", "-f", "spotrelay"]).stdout
    for name in (
        "spotrelay/agent/systemd/spotrelay-agent.service",
        "spotrelay/agent/systemd/50-spotrelay-agent.rules",
        "spotrelay/agent/examples/agent.yaml",
        "spotrelay/router/systemd/spotrelay-router.service",
        "spotrelay/router/examples/router.yaml",
    ):
        assert name in shown, name
    placed = agent_env.spotrelay("agent", "install-unit", "--root", str(tmp_path))
    assert placed.returncode == 0, placed.stderr
    unit = tmp_path / "etc/systemd/system/spotrelay-agent.service"
    assert "ExecStart=" in unit.read_text()
    config = tmp_path / "etc/spotrelay/agent.yaml"
    config.write_text("# edited by the operator\n")
    again = agent_env.spotrelay("agent", "install-unit", "--root", str(tmp_path))
    assert "kept" in again.stdout
    assert config.read_text() == "# edited by the operator\n"  # never overwritten silently


def test_base_install_lists_every_command(wheel: Path, tmp_path: Path) -> None:
    base = Env(tmp_path / "base", wheel, "")
    assert base.installed() - {"pip", "setuptools"} == {"spotrelay", "pyyaml"}
    out = base.spotrelay("--help")
    assert out.returncode == 0, out.stderr
    for command in ("router", "agent", "sim", "demo", "up", "status"):
        assert command in out.stdout
    agent = base.spotrelay("agent")
    assert agent.returncode == 2
    assert "pip install 'spotrelay[agent]'" in agent.stderr


def test_the_agent_imports_nothing_of_the_router_simulator_or_deploy_tool() -> None:
    code = (
        "import sys\n"
        "from spotrelay.core import cli\n"
        "cli.build_parser(['agent'])\n"
        "from spotrelay.agent import service, check\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'gevent', 'gunicorn', 'aiohttp', 'matplotlib', 'openai', 'boto3', 'requests')"
        " or m.startswith(('spotrelay.router', 'spotrelay.sim', 'spotrelay.deploy')))\n"
        "print(bad)\n"
    )
    out = _run([sys.executable, "-c", code], timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
