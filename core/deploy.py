"""``spotrelay up | down``: a small YAML file → tfvars → Terraform.

The YAML (``deploy.yaml``, schema :class:`DeployConfig`) names what an
operator chooses — region, subnets, model, instance types, sizes — and is
turned into ``spotrelay.tfvars.json`` for ``terraform/examples/complete``
(or any configuration with the same variables). Terraform is driven through
python-terraform's generic ``cmd()`` with the working directory set and
today's flags: python-terraform 0.10.1 predates Terraform 0.15, its
``apply(dir)`` passes the directory as an argument and its ``destroy()``
passes ``-force``, both removed from Terraform since (docs/deploy.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, setting

VARS_FILE = "spotrelay.tfvars.json"
PLAN_FILE = "spotrelay.tfplan"
DEFAULT_DIR = Path("terraform") / "examples" / "complete"
# 24 GiB GPUs and up: they hold a 7-8B 16-bit model; g4dn's 16 GiB T4 does not.
DEFAULT_INSTANCE_TYPES = [
    "g6.xlarge",
    "g5.xlarge",
    "g6e.xlarge",
    "g6.2xlarge",
    "g5.2xlarge",
    "g6e.2xlarge",
]
# ModelSection keys that are pool variables of their own, not part of `model`.
MODEL_SIZING = {
    "params_billion": "model_params_billion",
    "gpu_memory_gib": "model_gpu_memory_gib",
    "s3_uri": "model_s3_uri",
    "s3_load": "model_s3_load",
}


# -- configuration ------------------------------------------------------------------------


@dataclass
class TerraformSection:
    binary: str | None = setting(
        None, help="terraform or tofu executable (path or name); default: terraform, then tofu"
    )
    dir: str | None = setting(
        None, help="Terraform configuration to apply; default: terraform/examples/complete"
    )
    backend_config: list[str] = setting(
        default_factory=list,
        help="terraform init -backend-config values: a file (backend.hcl) or key=value; "
        "the bundled example keeps its state in S3 and needs the bucket here",
    )


@dataclass
class DeploymentSection:
    name: str = setting("spotrelay", help="name prefix of every resource")
    region: str | None = setting(None, help="AWS region, e.g. us-east-1")
    vpc_id: str | None = setting(None, help="existing VPC")
    private_subnet_ids: list[str] = setting(
        default_factory=list, help="private subnets (>= 2 AZs) for routers and GPU nodes"
    )
    public_subnet_ids: list[str] = setting(
        default_factory=list, help="public subnets (>= 2 AZs) for an internet-facing ALB"
    )
    alb_internal: bool = setting(
        True, help="internal ALB (private subnets); false needs certificate_arn and API keys"
    )
    allowed_cidrs: list[str] = setting(
        default_factory=list, help="client networks allowed to reach the load balancer"
    )
    certificate_arn: str | None = setting(None, help="ACM certificate: HTTPS on the ALB")
    api_keys_parameter: str | None = setting(
        None, help="SSM SecureString with the data-plane API keys, comma-separated"
    )


@dataclass
class ModelSection:
    name: str | None = setting(None, help="Hugging Face id or path of the model vLLM serves")
    served_name: str | None = setting(None, help="name clients send; default: model.name")
    max_model_len: int | None = setting(None, min=256, help="vLLM --max-model-len")
    gpu_memory_utilization: float = setting(0.9, min=0.05, max=1.0, help="vLLM memory share")
    tensor_parallel_size: int = setting(1, choices=(1, 2, 4, 8), help="GPUs per vLLM server")
    extra_args: list[str] = setting(default_factory=list, help="extra `vllm serve` tokens")
    hf_token_parameter: str | None = setting(
        None, help="SSM parameter with a Hugging Face token (gated models)"
    )
    params_billion: float | None = setting(
        None, min=0.001, help="parameters in billions: every instance type is checked to hold it"
    )
    gpu_memory_gib: float | None = setting(
        None, min=0.1, help="GPU memory the model needs (GiB), when known; overrides the estimate"
    )
    s3_uri: str | None = setting(
        None, help="load the weights from this S3 prefix (s3://bucket/path/) instead of the hub"
    )
    s3_load: str = setting(
        "copy", choices=("copy", "stream"), help="copy to local NVMe at boot, or stream (runai)"
    )


@dataclass
class PoolSection:
    instance_types: list[str] = setting(
        default_factory=lambda: list(DEFAULT_INSTANCE_TYPES),
        help="GPU instance types, most preferred first",
    )
    min_size: int = setting(0, min=0, help="fewest GPU nodes")
    desired_capacity: int = setting(1, min=0, help="GPU nodes to run")
    max_size: int | None = setting(None, min=0, help="most GPU nodes; default desired + 1")
    on_demand_base_capacity: int = setting(0, min=0, help="nodes always bought on demand")
    on_demand_percentage_above_base_capacity: int = setting(
        0, min=0, max=100, help="on-demand share above the base, in percent"
    )
    ami_id: str | None = setting(None, help="GPU AMI with vLLM baked in (terraform/.../bake)")


@dataclass
class SoftwareSection:
    vllm_version: str = setting("0.33.0", help="pinned vLLM version on the GPU nodes")
    spotrelay_pip_spec: str | None = setting(
        None,
        help="instead of the wheel up builds from the checkout: a pip requirement (spotrelay==X) "
        "or wheel URL, installed only if its file matches spotrelay_sha256",
    )
    spotrelay_sha256: str | None = setting(
        None, help="sha256 of the file spotrelay_pip_spec downloads (required with it)"
    )


@dataclass
class RouterSection:
    instance_type: str = setting("c7i.large", help="on-demand instance type of the routers")
    count: int = setting(2, min=1, max=8, help="number of routers")


@dataclass
class StatusSection:
    router_url: str | None = setting(None, help="router to ask; default: terraform output")
    node_token: str | None = setting(None, secret=True, help="node token for GET /nodes")
    node_token_file: str | None = setting(None, help="file with the node token")
    asg_name: str | None = setting(None, help="GPU Auto Scaling group; default: terraform output")
    aws_endpoint_url: str | None = setting(None, help="AWS API endpoint override (tests)")
    never_registered_after_s: float | None = setting(
        None,
        min=0,
        help="flag instances this old that never registered; default: the launch hook timeout",
    )
    timeout_s: float = setting(10, min=0.1, help="HTTP and AWS call timeout")


@dataclass
class UpSection:
    preflight: bool = setting(True, help="run spotrelay preflight before applying")
    wait: bool = setting(True, help="after apply, wait for the group's desired ready nodes")
    wait_timeout_s: float = setting(
        2700, min=0, help="give up waiting after this long (exit 1); cold starts take minutes"
    )
    poll_interval_s: float = setting(10, min=0.1, help="how often the wait asks ASG and router")


@dataclass
class DeployConfig:
    terraform: TerraformSection = setting(default_factory=TerraformSection)
    deployment: DeploymentSection = setting(default_factory=DeploymentSection)
    model: ModelSection = setting(default_factory=ModelSection)
    pool: PoolSection = setting(default_factory=PoolSection)
    software: SoftwareSection = setting(default_factory=SoftwareSection)
    router: RouterSection = setting(default_factory=RouterSection)
    status: StatusSection = setting(default_factory=StatusSection)
    up: UpSection = setting(default_factory=UpSection)
    tags: dict[str, str] = setting(default_factory=dict, help="tags on every resource")
    variables: dict[str, Any] = setting(
        default_factory=dict, help="extra Terraform variables, passed through verbatim (win)"
    )


# -- YAML → tfvars ------------------------------------------------------------------------


def _present(d: dict[str, Any]) -> dict[str, Any]:
    """Drop unset keys: Terraform then applies the variable's own default."""
    return {k: v for k, v in d.items() if v is not None}


def tfvars(cfg: DeployConfig, wheel: dict[str, str] | None = None) -> dict[str, Any]:
    """The Terraform variables of ``examples/complete`` for this configuration.

    ``wheel`` is the uploaded wheel's ``{key, sha256}`` (``spotrelay_wheel``);
    without it the package is ``software.spotrelay_pip_spec``, pinned by hash.
    """
    d = cfg.deployment
    values: dict[str, Any] = {
        "name": d.name,
        "region": d.region,
        "vpc_id": d.vpc_id,
        "private_subnet_ids": d.private_subnet_ids or None,
        "public_subnet_ids": d.public_subnet_ids or None,
        "alb_internal": d.alb_internal,
        "allowed_cidrs": d.allowed_cidrs or None,
        "certificate_arn": d.certificate_arn,
        "api_keys_parameter": d.api_keys_parameter,
        "model": _model(cfg.model) if cfg.model.name else None,
        "instance_types": cfg.pool.instance_types,
        "scaling": _present(
            {
                "min_size": cfg.pool.min_size,
                "desired_capacity": cfg.pool.desired_capacity,
                "max_size": cfg.pool.max_size,
                "on_demand_base_capacity": cfg.pool.on_demand_base_capacity,
                "on_demand_percentage_above_base_capacity": (
                    cfg.pool.on_demand_percentage_above_base_capacity
                ),
            }
        ),
        "vllm_version": cfg.software.vllm_version,
        "spotrelay_wheel": wheel,
        "spotrelay_pip_spec": None if wheel else cfg.software.spotrelay_pip_spec,
        "spotrelay_sha256": None if wheel else cfg.software.spotrelay_sha256,
        "gpu_ami_id": cfg.pool.ami_id,
        "router_instance_type": cfg.router.instance_type,
        "router_count": cfg.router.count,
        "tags": dict(cfg.tags),
    }
    if cfg.model.name:
        sizing = {var: getattr(cfg.model, key) for key, var in MODEL_SIZING.items()}
        if not cfg.model.s3_uri:
            sizing["model_s3_load"] = None
        values.update(sizing)
    values = _present(values)
    values.update(cfg.variables)
    return values


def _model(model: ModelSection) -> dict[str, Any]:
    doc = dataclasses.asdict(model)
    for key in MODEL_SIZING:
        doc.pop(key)
    return _present(doc)


REQUIRED_FOR_EXAMPLE = {
    "region": "deployment.region",
    "vpc_id": "deployment.vpc_id",
    "private_subnet_ids": "deployment.private_subnet_ids",
    "allowed_cidrs": "deployment.allowed_cidrs",
    "model": "model.name",
}


def check_required(values: dict[str, Any]) -> None:
    """One-line errors for what examples/complete cannot do without."""
    for var, key in REQUIRED_FOR_EXAMPLE.items():
        if values.get(var) in (None, [], ""):
            raise ConfigError(key, "required for terraform/examples/complete")


def check_package(software: SoftwareSection) -> None:
    """An index release is installed only pinned by the hash of its file."""
    sha = software.spotrelay_sha256
    if software.spotrelay_pip_spec and not sha:
        raise ConfigError(
            "software.spotrelay_sha256",
            "required with software.spotrelay_pip_spec (the sha256 of the file it downloads)",
        )
    if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError("software.spotrelay_sha256", "must be 64 lowercase hex digits", sha)
    if sha and not software.spotrelay_pip_spec:
        raise ConfigError("software.spotrelay_sha256", "set only with software.spotrelay_pip_spec")


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


def write_tfvars(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / VARS_FILE
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    return path


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
            raise TerraformFailed(f"terraform output failed: {_first_line(err)}")
        data = json.loads(out or "{}")
        return {name: item.get("value") for name, item in data.items()}

    def cleanup(self) -> None:
        (self.working_dir / PLAN_FILE).unlink(missing_ok=True)


def _first_line(text: str) -> str:
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
