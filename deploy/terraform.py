"""Terraform (or OpenTofu) as ``spotrelay up | down | status`` drive it.

Finding the executable, the configuration directory and its backend, and the
steps themselves. Terraform is driven through python-terraform's generic
``cmd()`` with the working directory set and today's flags: python-terraform
0.10.1 predates Terraform 0.15, its ``apply(dir)`` passes the directory as an
argument and its ``destroy()`` passes ``-force``, both removed from Terraform
since (docs/deploy.md).

The executable: the configured binary (``terraform.binary``, a path or a name
looked up on PATH), else ``terraform`` on PATH, else ``tofu`` on PATH. Both
speak the same CLI for everything spotrelay runs (init, plan, apply, destroy,
output).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spotrelay.core.config import ConfigError

PLAN_FILE = "spotrelay.tfplan"
DEFAULT_DIR = Path("terraform") / "examples" / "complete"
DEFAULT_BINARIES: tuple[str, ...] = ("terraform", "tofu")


def find_binary(
    configured: str | None = None,
    names: Sequence[str] = DEFAULT_BINARIES,
    path: str | None = None,
) -> str:
    """The absolute path of the executable to run, or a ConfigError saying what to do."""
    if configured:
        if os.sep in configured or (os.altsep and os.altsep in configured):
            if os.path.isfile(configured) and os.access(configured, os.X_OK):
                return os.path.abspath(configured)
            raise ConfigError("terraform.binary", "not an executable file", configured)
        found = shutil.which(configured, path=path)
        if found:
            return found
        raise ConfigError("terraform.binary", "not found on PATH", configured)
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    raise ConfigError(
        "terraform.binary",
        "neither terraform nor tofu is on PATH; install one or set terraform.binary",
    )


def backend_args(values: list[str], is_example: bool) -> list[str]:
    """``-backend-config=`` arguments: files made absolute (init runs in the config dir)."""
    if is_example and not values:
        raise ConfigError(
            "terraform.backend_config",
            "required for terraform/examples/complete: its state lives in S3 "
            "(copy backend.hcl.example to backend.hcl and name it here)",
        )
    args = []
    for i, value in enumerate(values):
        if "=" not in value:
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"terraform.backend_config[{i}]", "no such file", value)
            value = str(path)
        args.append(f"-backend-config={value}")
    return args


def resolve_dir(configured: str | None, override: str | None = None) -> tuple[Path, bool]:
    """The configuration directory and whether it is the bundled example."""
    chosen = override or configured
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError("terraform.dir", "not a directory", str(chosen))
        return path, False
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base / DEFAULT_DIR
        if candidate.is_dir():
            return candidate.resolve(), True
    raise ConfigError(
        "terraform.dir",
        "terraform/examples/complete not found here; run from a spotrelay checkout or set it",
    )


# -- driving Terraform --------------------------------------------------------------------


class TerraformFailed(RuntimeError):
    """A Terraform command exited non-zero; the message names the step."""


class TerraformDriver:
    """Terraform steps through python-terraform's generic ``cmd()``.

    Only ``cmd()`` is used: it runs ``<binary> <command> <args>`` in
    ``working_dir`` and returns ``(code, stdout, stderr)``. Its convenience
    wrappers (``apply``, ``destroy``, ``plan``, ``init``) emit flags modern
    Terraform rejects, so every flag is spelled out here.
    """

    def __init__(self, binary: str, working_dir: Path, echo: Callable[[str], None] = print):
        from python_terraform import Terraform

        # python-terraform logs "error: None" on every failed streamed command (it
        # has no captured stderr to show); Terraform's own error already reached
        # stderr, and TerraformFailed names the step, so its logger stays quiet.
        logging.getLogger("python_terraform").setLevel(logging.CRITICAL)
        self.binary = binary
        self.working_dir = working_dir
        self.echo = echo
        self._tf = Terraform(working_dir=str(working_dir), terraform_bin_path=binary)
        self.color = sys.stdout.isatty() and "NO_COLOR" not in os.environ

    def _flags(self) -> list[str]:
        return [] if self.color else ["-no-color"]

    def step(self, title: str, command: str, *args: str) -> None:
        """Run one step with its output streamed to our stdout/stderr.

        Flags go before positional arguments (a plan file): Terraform stops
        parsing flags at the first positional one.
        """
        argv = [*self._flags(), *args]
        self.echo(f"==> {title}: {Path(self.binary).name} {command} {' '.join(argv)}".rstrip())
        sys.stdout.flush()
        code, _, _ = self._tf.cmd(command, *argv, capture_output=False)
        if code != 0:
            raise TerraformFailed(f"terraform {command} failed (exit {code})")

    def capture(self, command: str, *args: str) -> tuple[int, str, str]:
        code, out, err = self._tf.cmd(command, "-no-color", *args, capture_output=True)
        return code, out or "", err or ""

    def init(self, backend_config: list[str] | None = None) -> None:
        self.step("init", "init", "-input=false", *(backend_config or []))

    def plan(self, vars_file: Path, destroy: bool = False) -> None:
        args = ["-input=false", f"-var-file={vars_file.name}", f"-out={PLAN_FILE}"]
        if destroy:
            args.insert(0, "-destroy")
        self.step("plan", "plan", *args)

    def apply_plan(self) -> None:
        self.step("apply", "apply", "-input=false", "-auto-approve", PLAN_FILE)

    def destroy(self, vars_file: Path) -> None:
        self.step(
            "destroy", "destroy", "-input=false", "-auto-approve", f"-var-file={vars_file.name}"
        )

    def outputs(self) -> dict[str, Any]:
        """``terraform output -json`` as plain values ({} when there is no state)."""
        code, out, err = self.capture("output", "-json")
        if code != 0:
            raise TerraformFailed(f"terraform output failed: {first_error_line(err)}")
        data = json.loads(out or "{}")
        return {name: item.get("value") for name, item in data.items()}

    def cleanup(self) -> None:
        (self.working_dir / PLAN_FILE).unlink(missing_ok=True)


def first_error_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip(" │╷╵\t")
        if line and not line.startswith("There are some problems with the CLI"):
            return line
    return "no error output"


# -- summaries ----------------------------------------------------------------------------

SUMMARY_ORDER: tuple[str, ...] = (
    "router_url", "model", "gpu_pool_asg_name", "router_control_url", "aws_region",
    "artifacts_bucket", "spotrelay_package",
)  # fmt: skip


def format_outputs(outputs: dict[str, Any]) -> str:
    """Terraform outputs as aligned ``name  value`` lines, the important ones first."""
    if not outputs:
        return "  (no outputs)"
    names = [n for n in SUMMARY_ORDER if n in outputs] + sorted(
        n for n in outputs if n not in SUMMARY_ORDER
    )
    width = max(len(n) for n in names)
    lines = []
    for name in names:
        value = outputs[name]
        shown = value if isinstance(value, str) else json.dumps(value)
        lines.append(f"  {name.ljust(width)}  {shown}")
    return "\n".join(lines)
