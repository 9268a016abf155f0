"""CLI for deployments: ``spotrelay up | down | status | preflight | scale``.

Light at import time: the Terraform and AWS code loads inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotrelay.core.cli import add_command

if TYPE_CHECKING:
    from .artifacts import Wheel
    from .settings import DeployConfig
    from .terraform import TerraformDriver

UP_HELP = """\
Create or update a deployment from this checkout: build the spotrelay wheel
(reproducibly; --wheel PATH to use one), write spotrelay.tfvars.json from
the YAML, run spotrelay preflight (--skip-preflight skips), terraform init,
apply the artifacts bucket (artifacts.tf) alone, upload the wheel under a key
named by its sha256, then plan and apply everything (-input=false
-auto-approve) in the configuration directory (default
terraform/examples/complete). Routers and GPU nodes install exactly that
object after checking its sha256. Prints the outputs, then waits until the
group's actual desired number of nodes are registered and ready on the
router (up.wait_timeout_s; --no-wait skips). Exit status 1 if they are not.
With software.spotrelay_pip_spec (and spotrelay_sha256) no wheel is built."""

PREFLIGHT_HELP = """\
Check that the account can run the pool, one line per check (OK, WARN or
FAIL and why): spot and on-demand GPU vCPU quotas against the pool's maximum
(max_size x vCPUs of the largest type), instance types offered in the
subnets' AZs, the model fitting every type, Lambda concurrency for the
controller, and the service-linked roles. Exit status 1 on any FAIL.
spotrelay up runs it before applying."""

SCALE_HELP = """\
Resize the GPU pool: set the Auto Scaling group's desired capacity to N
(within its min/max; a size outside is refused with the range) and wait
until N nodes are ready on the router (up.wait_timeout_s; --no-wait skips).
Changing pool.desired_capacity and re-running up does not resize an existing
group: Terraform leaves the desired capacity to scaling after creation."""

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
    from spotrelay.core.config import describe

    from .settings import DeployConfig

    return describe(DeployConfig)


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    epilog = _epilog()
    for name, text, handler in (
        ("up", UP_HELP, _up),
        ("down", DOWN_HELP, _down),
        ("status", STATUS_HELP, _status),
        ("preflight", PREFLIGHT_HELP, _preflight),
        ("scale", SCALE_HELP, _scale),
    ):
        help_line = text.splitlines()[0].rstrip(":")
        p = add_command(
            sub, common, name, help=help_line, description=text, handler=handler, epilog=epilog
        )
        p.add_argument("--dir", help="Terraform configuration directory (terraform.dir)")
        p.add_argument(
            "--terraform", metavar="BINARY", help="terraform/tofu executable (terraform.binary)"
        )
        if name == "up":
            p.add_argument("--plan-only", action="store_true", help="init and plan, no apply")
            p.add_argument(
                "--wheel",
                metavar="PATH",
                help="deploy this spotrelay wheel instead of building one",
            )
            p.add_argument(
                "--skip-preflight", action="store_true", help="do not run preflight (up.preflight)"
            )
        if name == "scale":
            p.add_argument("nodes", type=int, metavar="N", help="GPU nodes to run")
        if name in ("up", "scale"):
            p.add_argument("--no-wait", action="store_true", help="do not wait for ready nodes")
            p.add_argument(
                "--wait-timeout", type=float, metavar="S", help="up.wait_timeout_s for this run"
            )
        if name == "down":
            p.add_argument("--yes", action="store_true", help="really destroy")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON")


def _load(args: argparse.Namespace) -> DeployConfig:
    from spotrelay.core.config import load

    from .settings import DeployConfig

    overrides: dict[str, Any] = {"terraform": {"binary": args.terraform, "dir": args.dir}}
    if getattr(args, "no_wait", False) or getattr(args, "wait_timeout", None) is not None:
        wait = False if args.no_wait else None
        overrides["up"] = {"wait": wait, "wait_timeout_s": args.wait_timeout}
    return load(DeployConfig, args.config, overrides=overrides)


def _driver(
    cfg: DeployConfig,
    need_example_vars: bool,
    wheel: Wheel | None = None,
    need_backend: bool = True,
) -> tuple[TerraformDriver, Path, list[str]]:
    """(TerraformDriver, vars file, init arguments) for the configured directory."""
    from .terraform import TerraformDriver, backend_args, find_binary, resolve_dir
    from .tfvars import check_package, check_required, tfvars, write_tfvars

    directory, is_example = resolve_dir(cfg.terraform.dir)
    binary = find_binary(cfg.terraform.binary)
    check_package(cfg.software)
    values = tfvars(cfg, wheel.tfvar() if wheel else _last_wheel(directory, cfg))
    if is_example and need_example_vars:
        check_required(values)
    init_args = backend_args(cfg.terraform.backend_config, is_example and need_backend)
    vars_file = write_tfvars(directory, values)
    print(f"spotrelay: {directory} with {vars_file.name} ({binary})")
    return TerraformDriver(binary, directory), vars_file, init_args


def _last_wheel(directory: Path, cfg: DeployConfig) -> dict[str, Any] | None:
    """The wheel the last ``up`` deployed, so down and preflight keep the variables valid."""
    import json

    from .tfvars import VARS_FILE

    path = directory / VARS_FILE
    if cfg.software.spotrelay_pip_spec or not path.is_file():
        return None
    wheel: dict[str, Any] | None = json.loads(path.read_text()).get("spotrelay_wheel")
    return wheel


def _up(args: argparse.Namespace) -> int:
    from .artifacts import ArtifactError
    from .pool_plan import PoolPlanError
    from .terraform import TerraformFailed, format_outputs

    cfg = _load(args)
    try:
        wheel = _wheel(cfg, args)
    except ArtifactError as exc:
        print(f"spotrelay up: {exc}", file=sys.stderr)
        return 1
    driver, vars_file, init_args = _driver(cfg, need_example_vars=True, wheel=wheel)
    try:
        if cfg.up.preflight and not args.skip_preflight and not _run_preflight(cfg, driver):
            print("spotrelay up: preflight failed; nothing applied", file=sys.stderr)
            return 1
        driver.init(init_args)
        if wheel and not args.plan_only:
            _publish(cfg, driver, vars_file, wheel)
        driver.plan(vars_file)
        if args.plan_only:
            print("spotrelay up: plan only; nothing applied")
            return 0
        driver.apply_plan()
        outputs = driver.outputs()
    except (TerraformFailed, ArtifactError, PoolPlanError) as exc:
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


def _wheel(cfg: DeployConfig, args: argparse.Namespace) -> Wheel | None:
    """The wheel to deploy, unless the YAML names a hash-pinned package instead."""
    from .artifacts import prepare_wheel, scratch_dir

    if cfg.software.spotrelay_pip_spec:
        if args.wheel:
            print("spotrelay up: --wheel overrides software.spotrelay_pip_spec")
        else:
            return None
    return prepare_wheel(args.wheel, scratch_dir())


def _publish(cfg: DeployConfig, driver: TerraformDriver, vars_file: Path, wheel: Wheel) -> None:
    """Create the artifacts bucket alone (it must exist first), then upload the wheel."""
    from .artifacts import ARTIFACTS_FILE, artifact_targets, upload
    from .status import client
    from .terraform import TerraformFailed

    targets = artifact_targets(driver.working_dir)
    if not targets:
        raise TerraformFailed(
            f"{driver.working_dir} has no {ARTIFACTS_FILE} to hold the wheel; add one "
            "(see terraform/examples/complete) or set software.spotrelay_pip_spec"
        )
    driver.step(
        "artifacts",
        "apply",
        "-input=false",
        "-auto-approve",
        f"-var-file={vars_file.name}",
        *targets,
    )
    bucket = driver.outputs().get("artifacts_bucket")
    if not bucket:
        raise TerraformFailed("no artifacts_bucket output after applying the artifacts bucket")
    upload(client("s3", cfg.status, _region(cfg, {})), bucket, wheel)


def _region(cfg: DeployConfig, outputs: dict[str, Any]) -> str | None:
    return cfg.deployment.region or outputs.get("aws_region")


def _run_preflight(cfg: DeployConfig, driver: TerraformDriver) -> bool:
    """Print each check; True when none failed."""
    import json

    from .pool_plan import pool_plan
    from .preflight import failed, run_checks
    from .status import client
    from .tfvars import VARS_FILE

    values = json.loads((driver.working_dir / VARS_FILE).read_text())
    if not values.get("region"):
        values["region"] = _region(cfg, {})
    print("==> preflight")
    plan = pool_plan(driver.binary, driver.working_dir, values)
    checks = run_checks(plan, lambda service: client(service, cfg.status, plan.region))
    for check in checks:
        print("  " + check.line())
    bad = failed(checks)
    if bad:
        print(f"preflight: FAIL {bad[0].name}: {bad[0].reason}", file=sys.stderr)
    return not bad


def _wait_ready(
    cfg: DeployConfig,
    outputs: dict[str, Any],
    done_when: Callable[[Any], bool] | None = None,
    what: str = "up",
) -> bool:
    from .status import gather, render
    from .wait import wait_ready

    region = _region(cfg, outputs)
    print(
        f"\nspotrelay {what}: waiting up to {cfg.up.wait_timeout_s:.0f}s "
        "for ready, registered nodes"
    )
    ok, report = wait_ready(
        lambda: gather(cfg.status, outputs, region),
        timeout_s=cfg.up.wait_timeout_s,
        interval_s=cfg.up.poll_interval_s,
        done_when=done_when,
    )
    if ok and what == "up" and report.desired != cfg.pool.desired_capacity:
        print(
            f"spotrelay up: the group runs {report.desired} nodes, not pool.desired_capacity "
            f"{cfg.pool.desired_capacity}: Terraform sets it only when creating the group; "
            f"spotrelay scale {cfg.pool.desired_capacity} resizes it"
        )
    if not ok:
        print(render(report))
        print(
            f"spotrelay {what}: timed out waiting for ready nodes (docs/runbook.md: "
            '"a node never becomes ready")',
            file=sys.stderr,
        )
    return ok


def _preflight(args: argparse.Namespace) -> int:
    from .pool_plan import PoolPlanError

    cfg = _load(args)
    driver, _, _ = _driver(cfg, need_example_vars=True, need_backend=False)
    try:
        return 0 if _run_preflight(cfg, driver) else 1
    except PoolPlanError as exc:
        print(f"preflight: FAIL pool configuration: {exc}", file=sys.stderr)
        return 1


def _scale(args: argparse.Namespace) -> int:
    from .scale import ScaleError, set_desired, settled
    from .status import client

    cfg = _load(args)
    outputs = _outputs(cfg, [])
    name = cfg.status.asg_name or outputs.get("gpu_pool_asg_name")
    if not name:
        print(
            "spotrelay scale: no status.asg_name and no gpu_pool_asg_name output", file=sys.stderr
        )
        return 1
    n = args.nodes
    try:
        before, low, high = set_desired(
            client("autoscaling", cfg.status, _region(cfg, outputs)), name, n
        )
    except ScaleError as exc:
        print(f"spotrelay scale: {exc}", file=sys.stderr)
        return 1
    print(f"spotrelay scale: {name} desired capacity {before} -> {n} (min {low}, max {high})")
    if cfg.up.wait and not _wait_ready(cfg, outputs, lambda r: settled(r, n), "scale"):
        return 1
    print(f"spotrelay scale: {n} nodes ready")
    return 0


def _outputs(cfg: DeployConfig, notes: list[str]) -> dict[str, Any]:
    """Terraform outputs, unless the status section names router and group itself."""
    from .terraform import TerraformDriver, TerraformFailed, find_binary, resolve_dir

    if cfg.status.router_url and cfg.status.asg_name:
        return {}
    try:
        directory, _ = resolve_dir(cfg.terraform.dir)
        return TerraformDriver(find_binary(cfg.terraform.binary), directory).outputs()
    except TerraformFailed as exc:
        notes.append(str(exc))
        return {}


def _down(args: argparse.Namespace) -> int:
    from .terraform import TerraformFailed

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
    from .status import gather, render, render_json

    cfg = _load(args)
    notes: list[str] = []
    outputs = _outputs(cfg, notes)
    region = _region(cfg, outputs)
    report = gather(cfg.status, outputs, region)
    report.errors[:0] = notes
    print(render_json(report) if args.json else render(report))
    if report.group is not None and report.ready == 0 and not args.json:
        print("status: no node is ready", file=sys.stderr)
    return 0 if not report.errors and report.ready > 0 else 1
