"""``spotrelay status``: what the router and EC2 Auto Scaling say about a deployment.

Two independent views, so one can explain the other: the router's
``GET /nodes`` (registered nodes, their state and load, with the node token)
and the GPU Auto Scaling group's instances (``describe_auto_scaling_groups``).
Where to look comes from ``terraform output`` unless the ``status`` section
of deploy.yaml names it (router_url, asg_name, node token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError
from .deploy import StatusSection
from .secrets import read_token


@dataclass
class StatusReport:
    router_url: str | None = None
    asg_name: str | None = None
    nodes: list[dict[str, Any]] | None = None
    group: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "router_url": self.router_url,
            "asg_name": self.asg_name,
            "nodes": self.nodes,
            "autoscaling_group": self.group,
            "errors": self.errors,
        }


def node_token(cfg: StatusSection, outputs: dict[str, Any], region: str | None) -> str:
    """The node token: inline, from a file, else the SSM parameter terraform created."""
    token = read_token(cfg.node_token, cfg.node_token_file, "status.node_token")
    if token:
        return token
    parameter = outputs.get("node_token_parameter_name")
    if not parameter:
        raise ConfigError(
            "status.node_token", "not set and no node_token_parameter_name terraform output"
        )
    reply = _client("ssm", cfg, region).get_parameter(Name=parameter, WithDecryption=True)
    return reply["Parameter"]["Value"]


def _client(service: str, cfg: StatusSection, region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    conf = Config(
        connect_timeout=cfg.timeout_s, read_timeout=cfg.timeout_s, retries={"max_attempts": 2}
    )
    return boto3.client(service, region_name=region, endpoint_url=cfg.aws_endpoint_url, config=conf)


def router_nodes(url: str, token: str, timeout: float) -> list[dict[str, Any]]:
    import urllib3

    reply = urllib3.request(
        "GET",
        url.rstrip("/") + "/nodes",
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
        retries=False,
    )
    if reply.status == 401:
        raise RuntimeError("router refused the node token (401)")
    if reply.status >= 400:
        raise RuntimeError(f"router answered GET /nodes with HTTP {reply.status}")
    data = reply.json()
    return data if isinstance(data, list) else data.get("nodes", [])


def group_instances(cfg: StatusSection, name: str, region: str | None) -> dict[str, Any]:
    reply = _client("autoscaling", cfg, region).describe_auto_scaling_groups(
        AutoScalingGroupNames=[name]
    )
    groups = reply.get("AutoScalingGroups", [])
    if not groups:
        raise RuntimeError(f"Auto Scaling group {name!r} not found")
    g = groups[0]
    return {
        "name": g["AutoScalingGroupName"],
        "min_size": g["MinSize"],
        "max_size": g["MaxSize"],
        "desired_capacity": g["DesiredCapacity"],
        "instances": [
            {
                "id": i["InstanceId"],
                "type": i.get("InstanceType", "?"),
                "az": i.get("AvailabilityZone", "?"),
                "lifecycle_state": i.get("LifecycleState", "?"),
                "health": i.get("HealthStatus", "?"),
            }
            for i in g.get("Instances", [])
        ],
    }


def gather(cfg: StatusSection, outputs: dict[str, Any], region: str | None) -> StatusReport:
    """Ask both sides; a failure of one is reported, not fatal."""
    report = StatusReport(
        router_url=cfg.router_url or outputs.get("router_url"),
        asg_name=cfg.asg_name or outputs.get("gpu_pool_asg_name"),
    )
    if report.router_url:
        try:
            token = node_token(cfg, outputs, region)
            report.nodes = router_nodes(report.router_url, token, cfg.timeout_s)
        except ConfigError:
            raise
        except Exception as exc:
            report.errors.append(f"router {report.router_url}: {_describe(exc)}")
    else:
        report.errors.append("router: no status.router_url and no router_url terraform output")
    if report.asg_name:
        try:
            report.group = group_instances(cfg, report.asg_name, region)
        except Exception as exc:
            report.errors.append(f"autoscaling group {report.asg_name}: {_describe(exc)}")
    else:
        report.errors.append(
            "autoscaling: no status.asg_name and no gpu_pool_asg_name terraform output"
        )
    return report


def _describe(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def render(report: StatusReport) -> str:
    """A terminal view of the report."""
    lines = [f"router {report.router_url or '-'}"]
    if report.nodes is not None:
        if not report.nodes:
            lines.append("  no registered nodes")
        for n in report.nodes:
            load = n.get("load") or {}
            lines.append(
                "  {id:<22} {state:<9} {url:<28} models={models} running={r} waiting={w} "
                "in_flight={f}".format(
                    id=str(n.get("id")),
                    state=str(n.get("state")),
                    url=str(n.get("url")),
                    models=",".join(n.get("models") or []) or "-",
                    r=load.get("running", "-"),
                    w=load.get("waiting", "-"),
                    f=n.get("in_flight", "-"),
                )
            )
    lines.append(f"autoscaling group {report.asg_name or '-'}")
    if report.group is not None:
        g = report.group
        lines.append(
            f"  desired={g['desired_capacity']} min={g['min_size']} max={g['max_size']} "
            f"instances={len(g['instances'])}"
        )
        for i in g["instances"]:
            lines.append(
                f"  {i['id']:<20} {i['type']:<13} {i['az']:<12} {i['lifecycle_state']:<20} "
                f"{i['health']}"
            )
    for err in report.errors:
        lines.append(f"error: {err}")
    return "\n".join(lines)


def render_json(report: StatusReport) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=True)
