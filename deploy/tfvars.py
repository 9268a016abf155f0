"""``spotrelay up | down``: the YAML (:class:`.settings.DeployConfig`) → tfvars.

The configuration becomes ``spotrelay.tfvars.json`` for
``terraform/examples/complete`` (or any configuration with the same
variables). Unset keys are left out, so Terraform applies the variable's own
default rather than a second copy of it here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from spotrelay.core.config import ConfigError

from .settings import DeployConfig, ModelSection, SoftwareSection

VARS_FILE = "spotrelay.tfvars.json"
# ModelSection keys that are pool variables of their own, not part of `model`.
MODEL_SIZING = {
    "params_billion": "model_params_billion",
    "gpu_memory_gib": "model_gpu_memory_gib",
    "s3_uri": "model_s3_uri",
    "s3_load": "model_s3_load",
}


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


def write_tfvars(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / VARS_FILE
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    return path
