"""``spotrelay preflight``: will this account let the pool run? One line per check.

Each check asks an AWS API and says OK, WARN or FAIL with the reason:

- GPU vCPU quotas (Service Quotas), spot and on-demand, per quota family
  (G and VT, P), against the pool's maximum: ``max_size`` x the vCPUs of the
  largest chosen type of that family (EC2 DescribeInstanceTypes);
- every chosen instance type offered in the AZs of the chosen subnets
  (EC2 DescribeSubnets, DescribeInstanceTypeOfferings);
- the model fits every type (the gpu-pool module's own table and estimate,
  :mod:`.pool_plan`);
- Lambda concurrency headroom for the capacity controller
  (GetAccountSettings: UnreservedConcurrentExecutions);
- the service-linked roles Auto Scaling, Spot and ElastiCache use.

A FAIL makes ``spotrelay preflight`` (and ``spotrelay up``, which runs it
before applying) exit 1. The checks take their clients as arguments, so they
run the same against AWS, a moto server, or a server answering AWS's
documented response shapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .pool_plan import PoolPlan

OK, WARN, FAIL = "OK", "WARN", "FAIL"

# Service Quotas codes (service code ec2), in vCPUs, per instance family group.
QUOTAS: dict[str, dict[str, tuple[str, str]]] = {
    "G and VT": {
        "spot": ("L-3819A6DF", "All G and VT Spot Instance Requests"),
        "on-demand": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    },
    "P": {
        "spot": ("L-7212CCBC", "All P Spot Instance Requests"),
        "on-demand": ("L-417A185B", "Running On-Demand P instances"),
    },
}
SERVICE_LINKED_ROLES = {
    "AWSServiceRoleForAutoScaling": "autoscaling.amazonaws.com",
    "AWSServiceRoleForEC2Spot": "spot.amazonaws.com",
    "AWSServiceRoleForElastiCache": "elasticache.amazonaws.com",
}
# Lambda refuses reserved concurrency that would leave fewer unreserved
# ("you can reserve up to the unreserved account concurrency minus 100").
LAMBDA_MIN_UNRESERVED = 100


@dataclass(frozen=True)
class Check:
    status: str
    name: str
    reason: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.reason}"


Clients = Callable[[str], Any]  # service name -> boto3 client


def quota_group(instance_type: str) -> str | None:
    family = re.match(r"[a-z]+", instance_type)
    name = family.group(0) if family else ""
    if name.startswith("g") or name == "vt":
        return "G and VT"
    if name.startswith("p"):
        return "P"
    return None


def _error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "") or type(exc).__name__


def vcpus(ec2: Any, types: list[str]) -> dict[str, int]:
    reply = ec2.describe_instance_types(InstanceTypes=types)
    return {t["InstanceType"]: t["VCpuInfo"]["DefaultVCpus"] for t in reply["InstanceTypes"]}


def quota_value(quotas: Any, code: str) -> float:
    """The account's value, or AWS's default where the account has none applied."""
    try:
        return float(quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except Exception as exc:
        if _error_code(exc) != "NoSuchResourceException":
            raise
    reply = quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)
    return float(reply["Quota"]["Value"])


def check_quotas(plan: PoolPlan, clients: Clients) -> list[Check]:
    try:
        sizes = vcpus(clients("ec2"), plan.instance_types)
    except Exception as exc:
        return [Check(FAIL, "GPU vCPU quotas", f"DescribeInstanceTypes: {_error_code(exc)}: {exc}")]
    groups: dict[str, int] = {}
    for t in plan.instance_types:
        group = quota_group(t)
        if group:
            groups[group] = max(groups.get(group, 0), sizes.get(t, 0))
    results = []
    for group, largest in sorted(groups.items()):
        needs = {
            "spot": (plan.max_size, FAIL, f"max_size {plan.max_size}"),
            "on-demand": _on_demand_need(plan),
        }
        for market, (nodes, severity, why) in needs.items():
            code, title = QUOTAS[group][market]
            name = f'{market} quota "{title}" ({code})'
            need = nodes * largest
            try:
                have = quota_value(clients("service-quotas"), code)
            except Exception as exc:
                results.append(Check(WARN, name, f"cannot read it: {_error_code(exc)}"))
                continue
            detail = f"{have:g} vCPUs, pool needs {need} ({why} x {largest} vCPUs)"
            if nodes == 0:
                results.append(Check(OK, name, f"{have:g} vCPUs; no {market} nodes planned"))
            elif have < need:
                results.append(Check(severity, name, f"{detail}: ask for an increase"))
            else:
                results.append(Check(OK, name, detail))
    return results


def _on_demand_need(plan: PoolPlan) -> tuple[int, str, str]:
    """(nodes, severity if short, why): the group's own share fails, the fallback's warns."""
    if plan.fallback_max > plan.on_demand_max:
        nodes = min(plan.max_size, plan.on_demand_max + plan.fallback_max)
        return nodes, WARN, f"{nodes} on-demand nodes with the fallback"
    return plan.on_demand_max, FAIL, f"{plan.on_demand_max} on-demand nodes"


def check_offerings(plan: PoolPlan, clients: Clients) -> list[Check]:
    name = "instance types offered in the subnets' AZs"
    ec2 = clients("ec2")
    try:
        subnets = ec2.describe_subnets(SubnetIds=plan.subnet_ids)["Subnets"]
        azs = sorted({s["AvailabilityZone"] for s in subnets})
        reply = ec2.describe_instance_type_offerings(
            LocationType="availability-zone",
            Filters=[
                {"Name": "instance-type", "Values": plan.instance_types},
                {"Name": "location", "Values": azs},
            ],
        )
    except Exception as exc:
        return [Check(FAIL, name, f"{_error_code(exc)}: {exc}")]
    offered = {(o["InstanceType"], o["Location"]) for o in reply["InstanceTypeOfferings"]}
    nowhere = [t for t in plan.instance_types if not any((t, az) in offered for az in azs)]
    missing = [f"{t} in {az}" for t in plan.instance_types for az in azs if (t, az) not in offered]
    if nowhere:
        return [Check(FAIL, name, f"not offered in any of {', '.join(azs)}: {', '.join(nowhere)}")]
    if missing:
        return [Check(WARN, name, f"not offered: {', '.join(missing)} (fewer spot pools)")]
    return [Check(OK, name, f"{len(plan.instance_types)} types in {', '.join(azs)}")]


def check_model_fit(plan: PoolPlan) -> list[Check]:
    name = "model fits the instance types"
    if plan.need_gib is None:
        return [Check(WARN, name, "unknown: set model.params_billion or model.gpu_memory_gib")]
    unknown = [t for t in plan.instance_types if t not in plan.usable_gib]
    small = [f"{t} ({u:g} GiB)" for t, u in plan.usable_gib.items() if u < plan.need_gib]
    need = f"needs {plan.need_gib:.1f} GiB"
    if small:
        return [Check(FAIL, name, f"{need}; too small: {', '.join(small)}")]
    if unknown:
        why = "not in the module's GPU table (extra_gpu_specs)"
        return [Check(WARN, name, f"{need}; {why}: {', '.join(unknown)}")]
    return [Check(OK, name, f"{need}; every type holds it")]


def check_lambda(plan: PoolPlan, clients: Clients) -> list[Check]:
    name = "Lambda concurrency for the controller"
    if not plan.controller_on:
        return [Check(OK, name, "no controller (fallback and interruption queue off)")]
    try:
        limit = clients("lambda").get_account_settings()["AccountLimit"]
    except Exception as exc:
        return [Check(WARN, name, f"cannot read it: {_error_code(exc)}")]
    free, total = limit["UnreservedConcurrentExecutions"], limit["ConcurrentExecutions"]
    reserved = int(plan.controller.get("reserved_concurrency") or 0)
    detail = f"{free} unreserved of {total}"
    if free < 1:
        return [Check(FAIL, name, f"{detail}: the controller could not run")]
    if reserved and free - reserved < LAMBDA_MIN_UNRESERVED:
        why = (
            f"controller.reserved_concurrency {reserved} would leave {free - reserved}; "
            f"Lambda keeps {LAMBDA_MIN_UNRESERVED} unreserved (leave it unset)"
        )
        return [Check(FAIL, name, f"{detail}: {why}")]
    return [Check(OK, name, f"{detail}; {reserved or 'none'} reserved for the controller")]


def check_roles(clients: Clients) -> list[Check]:
    iam = clients("iam")
    results = []
    for role, service in SERVICE_LINKED_ROLES.items():
        try:
            iam.get_role(RoleName=role)
            results.append(Check(OK, f"service-linked role {role}", "exists"))
        except Exception as exc:
            code = _error_code(exc)
            fix = f"aws iam create-service-linked-role --aws-service-name {service}"
            if code == "NoSuchEntity":
                why = (
                    "missing; AWS creates it on first use if you may "
                    f"iam:CreateServiceLinkedRole, else: {fix}"
                )
            else:
                why = f"cannot read it ({code})"
            results.append(Check(WARN, f"service-linked role {role}", why))
    return results


def run_checks(plan: PoolPlan, clients: Clients) -> list[Check]:
    return [
        *check_quotas(plan, clients),
        *check_offerings(plan, clients),
        *check_model_fit(plan),
        *check_lambda(plan, clients),
        *check_roles(clients),
    ]


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL]
