"""``terraform validate`` and ``terraform test`` with a real Terraform and AWS provider.

The registry cannot be reached from these machines, but the machine image
ships ``/usr/local/bin/terraform`` and the AWS provider in a filesystem
mirror (``/opt/tf-plugins``, or ``SPOTRELAY_TF_PLUGINS``). Terraform is
pointed at that mirror only, through a CLI configuration file written for
the run, so nothing is downloaded.

The mirror holds a 5.x release while the modules require the 6.x release
that has every argument they use. When the mirror's provider is older than
that, the scratch copy goes through :data:`COMPAT` first: each entry rewrites
one line that exists only in 6.x, and the docs (docs/deploy.md, "How
Terraform is checked") list exactly these lines, which are then checked by
this compatibility step only. An entry that no longer matches exactly one
line fails the run, so the list cannot silently go stale.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TF_ROOT = Path(__file__).resolve().parents[2] / "terraform"
DEFAULT_PLUGIN_DIR = Path("/opt/tf-plugins")
DEFAULT_TERRAFORM = Path("/usr/local/bin/terraform")
AWS = "registry.terraform.io/hashicorp/aws"
# The module directories validated on their own (each one's callers are
# validated with it; the config and capacity submodules have no provider).
VALIDATE_DIRS = ("modules/gpu-pool", "modules/router", "examples/complete")
# The first provider release with every argument the modules use.
REQUIRED_MAJOR = 6
TIMEOUT_S = 900


@dataclass(frozen=True)
class Compat:
    """One 6.x-only line and what the 5.x provider checks instead."""

    path: str  # relative to terraform/
    line: str  # the line, blanks collapsed (alignment by `terraform fmt` does not matter)
    replacement: str | None  # None drops the line
    why: str


COMPAT: tuple[Compat, ...] = (
    Compat(
        "modules/router/main.tf",
        "auth_token_wo = local.registry_auth_token",
        "auth_token = local.registry_auth_token",
        "auth_token_wo (write-only) is 6.x; 5.x checks the value through auth_token",
    ),
    Compat(
        "modules/router/main.tf",
        "auth_token_wo_version = var.registry.auth_token_version",
        None,
        "auth_token_wo_version exists with auth_token_wo only",
    ),
)
# Test files that assert 6.x-only attributes: run only with a 6.x provider.
SIX_ONLY_TESTS = ("modules/router/tests/write_only.tftest.hcl",)
# The provider constraints (>= 6.62) are relaxed to the mirror's release.
CONSTRAINT = re.compile(r'^(\s*version\s*=\s*)"[^"]*"(\s*)$', re.M)


@dataclass(frozen=True)
class RealTerraform:
    binary: Path
    plugin_dir: Path
    aws_version: str

    def describe(self) -> str:
        return f"{self.binary} with hashicorp/aws {self.aws_version} from {self.plugin_dir}"

    @property
    def needs_compat(self) -> bool:
        return int(self.aws_version.split(".")[0]) < REQUIRED_MAJOR


def _platform() -> str:
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{os.uname().sysname.lower()}_{arch}"


def find() -> RealTerraform | str:
    """The binary and the mirrored AWS provider, or why they are not here."""
    env_bin = os.environ.get("SPOTRELAY_TERRAFORM")
    found = env_bin or shutil.which("terraform") or str(DEFAULT_TERRAFORM)
    binary = Path(found)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return f"no terraform binary (PATH, {DEFAULT_TERRAFORM} or SPOTRELAY_TERRAFORM)"
    plugin_dir = Path(os.environ.get("SPOTRELAY_TF_PLUGINS") or DEFAULT_PLUGIN_DIR)
    versions = sorted(
        (p.parent.name for p in (plugin_dir / AWS).glob(f"*/{_platform()}")),
        key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)),
    )
    if not versions:
        return (
            f"no hashicorp/aws provider for {_platform()} in the mirror {plugin_dir} "
            "(set SPOTRELAY_TF_PLUGINS)"
        )
    return RealTerraform(binary, plugin_dir, versions[-1])


def tested_dirs(tree: Path) -> list[str]:
    """Every directory with ``tests/*.tftest.hcl``, relative to ``tree``."""
    return sorted(
        {str(p.parent.parent.relative_to(tree)) for p in tree.rglob("tests/*.tftest.hcl")}
    )


def check_names() -> list[str]:
    names = [f"terraform validate: terraform/{rel}" for rel in VALIDATE_DIRS]
    return names + [f"terraform test: terraform/{rel}" for rel in tested_dirs(TF_ROOT)]


def apply_compat(tree: Path, version: str) -> list[str]:
    """Rewrite the 6.x-only lines in ``tree``; problems if an entry no longer applies."""
    problems = []
    for c in COMPAT:
        path = tree / c.path
        lines = path.read_text().splitlines(keepends=True)
        hits = [i for i, ln in enumerate(lines) if " ".join(ln.split()) == c.line]
        if len(hits) != 1:
            problems.append(
                f"compat: {c.path}: expected exactly one line {c.line!r}, found {len(hits)} "
                "(update tests/tfshim/tfreal.py COMPAT and docs/deploy.md)"
            )
            continue
        i = hits[0]
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines[i] = "" if c.replacement is None else f"{indent}{c.replacement}\n"
        path.write_text("".join(lines))
    for rel in SIX_ONLY_TESTS:
        if not (tree / rel).is_file():
            problems.append(f"compat: {rel} is gone (update SIX_ONLY_TESTS and docs/deploy.md)")
            continue
        (tree / rel).unlink()
    for versions_tf in tree.rglob("versions.tf"):
        text = versions_tf.read_text()
        if "hashicorp/aws" in text:
            versions_tf.write_text(CONSTRAINT.sub(rf'\g<1>">= {version}"\g<2>', text))
    return problems


def cli_config(real: RealTerraform, work: Path) -> Path:
    """A CLI configuration that installs hashicorp/* from the mirror only."""
    path = work / "terraformrc"
    path.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path = "{real.plugin_dir}"\n  }}\n'
        "}\n"
        "disable_checkpoint = true\n"
    )
    return path


def run(real: RealTerraform, args: list[str], cwd: Path, config: Path) -> tuple[int, str]:
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(config), "CHECKPOINT_DISABLE": "1"}
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    proc = subprocess.run(
        [str(real.binary), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return proc.returncode, proc.stdout + proc.stderr


def validate(real: RealTerraform, tree: Path, rel: str, config: Path) -> list[str]:
    """``terraform init -backend=false`` + ``terraform validate`` in one directory."""
    d = tree / rel
    for args in (
        ["init", "-backend=false", "-input=false", "-no-color"],
        ["validate", "-no-color"],
    ):
        code, out = run(real, args, d, config)
        if code != 0:
            return [f"terraform {args[0]} in terraform/{rel}:\n{_tail(out)}"]
    return []


def tftest(real: RealTerraform, tree: Path, rel: str, config: Path) -> list[str]:
    """``terraform init`` + ``terraform test`` (every file in tests/)."""
    d = tree / rel
    code, out = run(real, ["init", "-backend=false", "-input=false", "-no-color"], d, config)
    if code == 0:
        code, out = run(real, ["test", "-no-color"], d, config)
    if code != 0:
        return [f"terraform test in terraform/{rel}:\n{_tail(out)}"]
    return []


def run_all(real: RealTerraform, tree: Path, work: Path) -> Iterator[tuple[str, list[str]]]:
    """(check name, problems) for validate in each module and every test directory."""
    config = cli_config(real, work)
    if real.needs_compat:
        problems = apply_compat(tree, real.aws_version)
        yield f"compatibility step for hashicorp/aws {real.aws_version}", problems
        if problems:
            return
    for rel in VALIDATE_DIRS:
        yield f"terraform validate: terraform/{rel}", validate(real, tree, rel, config)
    for rel in tested_dirs(tree):
        yield f"terraform test: terraform/{rel}", tftest(real, tree, rel, config)


def _tail(out: str, keep: int = 6000) -> str:
    """The failures of a run (Terraform prints them last)."""
    return out[-keep:].strip()
