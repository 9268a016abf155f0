"""CLI for deployments: ``spotrelay up``, ``spotrelay down``, ``spotrelay status``.

Light at import time: the Terraform and AWS code loads inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .deploy import DeployConfig, TerraformDriver

UP_HELP = """\
Create or update a deployment: write spotrelay.tfvars.json from the YAML,
then terraform init, plan and apply (-input=false -auto-approve) in the
configuration directory (default terraform/examples/complete), print the
outputs (router URL, model, GPU Auto Scaling group), then wait until the
group's desired number of nodes are registered and ready on the router
(up.wait_timeout_s; --no-wait skips). Exit status 1 if they are not."""

DOWN_HELP = """\
Destroy a deployment (terraform destroy -input=false -auto-approve). Without
--yes it only shows the destroy plan."""

STATUS_HELP = """\
Show the routers' registered nodes (GET /nodes on their internal control
endpoint, with the node token) and the GPU Auto Scaling group instance by
instance: spot or on-demand, type, AZ, lifecycle state, health,
ready/draining on the routers ("never registered" past the launch hook
timeout), then the group's last scaling activities and spot interruptions.
Router URL, group name and the node token's SSM parameter come from
terraform output unless the status section of the YAML sets them. The token
is never sent over plain HTTP to a public address. Exit status 1 when
something could not be read or no node is ready."""


def _epilog() -> str:
    from .config import describe
    from .deploy import DeployConfig

    return describe(DeployConfig)


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    epilog = _epilog()
    fmt = argparse.RawDescriptionHelpFormatter
    for name, text, handler in (
        ("up", UP_HELP, _up),
        ("down", DOWN_HELP, _down),
        ("status", STATUS_HELP, _status),
    ):
        p = sub.add_parser(
            name,
            parents=[common],
            help=text.splitlines()[0].rstrip(":"),
            description=text,
            epilog=epilog,
            formatter_class=fmt,
        )
        p.add_argument("--dir", help="Terraform configuration directory (terraform.dir)")
        p.add_argument(
            "--terraform", metavar="BINARY", help="terraform/tofu executable (terraform.binary)"
        )
        if name == "up":
            p.add_argument("--plan-only", action="store_true", help="init and plan, no apply")
            p.add_argument("--no-wait", action="store_true", help="do not wait for ready nodes")
            p.add_argument(
                "--wait-timeout", type=float, metavar="S", help="up.wait_timeout_s for this run"
            )
        if name == "down":
            p.add_argument("--yes", action="store_true", help="really destroy")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=handler)


def _load(args: argparse.Namespace) -> DeployConfig:
    from .config import load
    from .deploy import DeployConfig

    overrides: dict[str, Any] = {"terraform": {"binary": args.terraform, "dir": args.dir}}
    if getattr(args, "no_wait", False) or getattr(args, "wait_timeout", None) is not None:
        wait = False if args.no_wait else None
        overrides["up"] = {"wait": wait, "wait_timeout_s": args.wait_timeout}
    return load(DeployConfig, args.config, overrides=overrides)


def _driver(cfg: DeployConfig, need_example_vars: bool) -> tuple[TerraformDriver, Path, list[str]]:
    from .deploy import (
        TerraformDriver,
        backend_args,
        check_required,
        resolve_dir,
        tfvars,
        write_tfvars,
    )
    from .terraform_bin import find_binary

    directory, is_example = resolve_dir(cfg.terraform.dir)
    binary = find_binary(cfg.terraform.binary)
    values = tfvars(cfg)
    if is_example and need_example_vars:
        check_required(values)
    init_args = backend_args(cfg.terraform.backend_config, is_example)
    vars_file = write_tfvars(directory, values)
    print(f"spotrelay: {directory} with {vars_file.name} ({binary})")
    return TerraformDriver(binary, directory), vars_file, init_args


def _up(args: argparse.Namespace) -> int:
    from .deploy import TerraformFailed, format_outputs

    cfg = _load(args)
    driver, vars_file, init_args = _driver(cfg, need_example_vars=True)
    try:
        driver.init(init_args)
        driver.plan(vars_file)
        if args.plan_only:
            print("spotrelay up: plan only; nothing applied")
            return 0
        driver.apply_plan()
        outputs = driver.outputs()
    except TerraformFailed as exc:
        print(f"spotrelay up: {exc}", file=sys.stderr)
        return 1
    finally:
        driver.cleanup()
    print("\nspotrelay up: applied\n" + format_outputs(outputs))
    if cfg.up.wait and not _wait_ready(cfg, outputs):
        return 1
    print("\nspotrelay up: deployment ready")
    if outputs.get("router_url"):
        print(f"      OpenAI base_url = {str(outputs['router_url']).rstrip('/')}/v1")
    return 0


def _wait_ready(cfg: DeployConfig, outputs: dict[str, Any]) -> bool:
    from .deploy_status import gather, render
    from .deploy_wait import wait_ready

    region = cfg.deployment.region or outputs.get("aws_region")
    print(f"\nspotrelay up: waiting up to {cfg.up.wait_timeout_s:.0f}s for ready, registered nodes")
    ok, report = wait_ready(
        lambda: gather(cfg.status, outputs, region),
        timeout_s=cfg.up.wait_timeout_s,
        interval_s=cfg.up.poll_interval_s,
    )
    if not ok:
        print(render(report))
        print(
            "spotrelay up: timed out waiting for ready nodes (docs/runbook.md: "
            '"a node never becomes ready")',
            file=sys.stderr,
        )
    return ok


def _down(args: argparse.Namespace) -> int:
    from .deploy import TerraformFailed

    cfg = _load(args)
    driver, vars_file, init_args = _driver(cfg, need_example_vars=False)
    try:
        driver.init(init_args)
        if not args.yes:
            driver.plan(vars_file, destroy=True)
            print("spotrelay down: nothing destroyed; re-run with --yes to destroy the above")
            return 1
        driver.destroy(vars_file)
    except TerraformFailed as exc:
        print(f"spotrelay down: {exc}", file=sys.stderr)
        return 1
    finally:
        driver.cleanup()
    print("spotrelay down: destroyed")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .deploy import TerraformDriver, TerraformFailed, resolve_dir
    from .deploy_status import gather, render, render_json
    from .terraform_bin import find_binary

    cfg = _load(args)
    outputs: dict[str, Any] = {}
    notes: list[str] = []
    if not (cfg.status.router_url and cfg.status.asg_name):
        try:
            directory, _ = resolve_dir(cfg.terraform.dir)
            driver = TerraformDriver(find_binary(cfg.terraform.binary), directory)
            outputs = driver.outputs()
        except TerraformFailed as exc:
            notes.append(str(exc))
    region = cfg.deployment.region or outputs.get("aws_region")
    report = gather(cfg.status, outputs, region)
    report.errors[:0] = notes
    print(render_json(report) if args.json else render(report))
    if report.group is not None and report.ready == 0 and not args.json:
        print("status: no node is ready", file=sys.stderr)
    return 0 if not report.errors and report.ready > 0 else 1
