"""What the GPU pool will ask of the account, as the gpu-pool module computes it.

``spotrelay preflight`` must not keep a second copy of the module's GPU
memory table, its model-size estimate or its ``max_size`` default, so it
asks the module: a scratch root configuration calls the provider-free
``gpu-pool/modules/config`` module with the deployment's variables and
reads its outputs (``scaling``, ``model_memory``) through the same
Terraform binary ``up`` uses. No provider, no state that matters, no AWS.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_MODULE = Path("terraform") / "modules" / "gpu-pool" / "modules" / "config"
# Inputs of the config module that spotrelay's tfvars carry under the same name.
PASSED: tuple[str, ...] = (
    "instance_types", "scaling", "model_params_billion", "model_gpu_memory_gib",
    "instance_requirements", "extra_gpu_specs", "model_bytes_per_param",
    "model_kv_cache_fraction",
)  # fmt: skip
# The config module insists on a package; preflight renders nothing with it.
PLACEHOLDER_SHA = "0" * 64


class PoolPlanError(RuntimeError):
    """The module could not be evaluated; the message is Terraform's first error."""


@dataclass
class PoolPlan:
    region: str
    instance_types: list[str]
    subnet_ids: list[str]
    min_size: int
    desired: int
    max_size: int
    on_demand_base: int
    on_demand_pct: int
    need_gib: float | None = None
    usable_gib: dict[str, float] = field(default_factory=dict)
    fallback: dict[str, Any] = field(default_factory=dict)
    interruption_queue: dict[str, Any] = field(default_factory=dict)
    controller: dict[str, Any] = field(default_factory=dict)

    @property
    def on_demand_max(self) -> int:
        """Most on-demand nodes the group itself buys (base + its share above)."""
        above = max(self.max_size - self.on_demand_base, 0)
        return min(self.max_size, self.on_demand_base + math.ceil(above * self.on_demand_pct / 100))

    @property
    def fallback_max(self) -> int:
        """Most on-demand nodes the controller's fallback may add (0 when it is off)."""
        if not self.fallback.get("enabled", False):
            return 0
        return int(self.fallback.get("max_on_demand") or self.desired)

    @property
    def controller_on(self) -> bool:
        return bool(self.fallback.get("enabled") or self.interruption_queue.get("enabled"))


def find_config_module(config_dir: Path) -> Path | None:
    """The config module beside the configuration (a checkout), else beside this package."""
    for base in (*config_dir.parents, Path(__file__).resolve().parents[1]):
        candidate = base / CONFIG_MODULE
        if (candidate / "main.tf").is_file():
            return candidate
    return None


def module_source(module: Path, root: Path) -> str:
    """``module``'s directory as a local module source for a root module in ``root``.

    Relative, never absolute: Terraform installs an absolute path as a package
    of its own, that one directory alone, and the config module's
    ``../../../shared`` modules would be outside it ("Local module path
    escapes module package").
    """
    rel = os.path.relpath(module, root)
    return rel if rel.startswith("../") else f"./{rel}"


def root_config(module: Path, values: dict[str, Any], work: Path) -> dict[str, Any]:
    """A JSON root module in ``work`` calling the config module with the deployment's values."""
    inputs: dict[str, Any] = {
        "source": module_source(module, work),
        "name": f"{values.get('name', 'spotrelay')}-gpu",
        "region": values["region"],
        "model": values.get("model") or {"name": "preflight"},
        "router_url": "http://preflight.invalid:8081",
        "node_token_parameter": "/spotrelay/preflight/node-token",
        "spotrelay": {"pip_spec": "spotrelay==0", "sha256": PLACEHOLDER_SHA},
    }
    inputs.update({k: values[k] for k in PASSED if values.get(k) is not None})
    outputs = {name: {"value": f"${{module.pool.{name}}}"} for name in ("scaling", "model_memory")}
    return {"module": {"pool": inputs}, "output": outputs}


def evaluate(binary: str, module: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Apply the scratch root module (no resources) and return its outputs."""
    from .terraform import TerraformDriver, first_error_line

    work = Path(tempfile.mkdtemp(prefix="spotrelay-preflight-"))
    try:
        (work / "main.tf.json").write_text(json.dumps(root_config(module, values, work), indent=2))
        driver = TerraformDriver(binary, work, echo=lambda _: None)
        for args in (("init", "-input=false"), ("apply", "-input=false", "-auto-approve")):
            code, out, err = driver.capture(*args)
            if code != 0:
                raise PoolPlanError(first_error_line(_error_block(out + err)))
        return driver.outputs()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _setting(values: dict[str, Any], config_dir: Path, variable: str) -> dict[str, Any]:
    if variable in values:
        return dict(values[variable] or {})
    return default_on(config_dir, variable)


def _error_block(text: str) -> str:
    """From Terraform's first ``Error:`` on (its summary line says what is wrong)."""
    at = text.find("Error:")
    return text[at:] if at >= 0 else text


def default_on(config_dir: Path, variable: str) -> dict[str, Any]:
    """``{"enabled": True}`` when the configuration turns ``variable`` on by default.

    examples/complete turns the on-demand fallback on unless the tfvars say
    otherwise; preflight must then count the on-demand nodes and the
    controller's Lambda even though spotrelay wrote no value for it.
    """
    block = re.compile(rf'^variable "{variable}" {{\n(.*?)^}}', re.M | re.S)
    for path in sorted(config_dir.glob("*.tf")):
        found = block.search(path.read_text())
        if found and re.search(
            r"^\s*default\s*=\s*\{\s*enabled\s*=\s*true\s*\}", found.group(1), re.M
        ):
            return {"enabled": True}
    return {}


def pool_plan(binary: str, config_dir: Path, values: dict[str, Any]) -> PoolPlan:
    module = find_config_module(config_dir)
    if module is None:
        raise PoolPlanError(f"no {CONFIG_MODULE} beside {config_dir} or this package")
    out = evaluate(binary, module, values)
    scaling, memory = out["scaling"], out["model_memory"]
    return PoolPlan(
        region=values["region"],
        instance_types=list(values.get("instance_types") or []),
        subnet_ids=list(values.get("private_subnet_ids") or []),
        min_size=int(scaling["min_size"]),
        desired=int(scaling["desired_capacity"]),
        max_size=int(scaling["max_size"]),
        on_demand_base=int(scaling["on_demand_base_capacity"]),
        on_demand_pct=int(scaling["on_demand_percentage_above_base_capacity"]),
        need_gib=memory.get("need_gib"),
        usable_gib={k: float(v) for k, v in (memory.get("usable_gib") or {}).items()},
        fallback=_setting(values, config_dir, "on_demand_fallback"),
        interruption_queue=_setting(values, config_dir, "interruption_queue"),
        controller=dict(values.get("controller") or {}),
    )
