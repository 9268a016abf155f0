"""``spotrelay status``: what the router and EC2 Auto Scaling say about a deployment.

Two independent views, so one can explain the other: the routers' shared
``GET /nodes`` (registered nodes, their state and load, with the node token)
and the GPU Auto Scaling group's instances (``describe_auto_scaling_groups``,
``describe_instances`` for spot/on-demand and age, the last scaling
activities), joined per instance by :mod:`.pool_status`.
Behind a load balancer any router (and any of its workers) may answer; the
router names itself (``X-Spotrelay-Router``) and its registry
(``X-Spotrelay-Registry``): with ``redis`` its view is the whole fleet's
shared one, with ``memory`` only that router's own.
Where to look comes from ``terraform output`` unless the ``status`` section
of deploy.yaml names it (router_url, asg_name, node token).

The node token is a credential: it goes to the routers' internal control
endpoint (``router_control_url``), and never over plain HTTP to a public
address — such a request is refused with an error saying why.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from spotrelay.core.config import ConfigError
from spotrelay.core.control_client import ControlClient, ControlError, NodeView, UrllibTransport
from spotrelay.core.secrets import read_token

from .pool_status import (
    DEFAULT_NEVER_AFTER_S,
    instance_details,
    join_instances,
    ready_count,
    render_activities,
    render_rows,
    scaling_activities,
)
from .settings import StatusSection


@dataclass
class StatusReport:
    router_url: str | None = None
    asg_name: str | None = None
    nodes: list[dict[str, Any]] | None = None
    answered_by: str | None = None  # which router process answered GET /nodes
    registry: str | None = None  # memory | redis | redis-down (its view's source)
    group: dict[str, Any] | None = None
    instances: list[dict[str, Any]] = field(default_factory=list)  # joined, one per instance
    activities: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ready(self) -> int:
        """Instances of the group a router has as ready."""
        return ready_count(self.instances)

    @property
    def desired(self) -> int | None:
        return self.group["desired_capacity"] if self.group else None

    def to_json(self) -> dict[str, Any]:
        return {
            "router_url": self.router_url,
            "answered_by": self.answered_by,
            "registry": self.registry,
            "asg_name": self.asg_name,
            "nodes": self.nodes,
            "autoscaling_group": self.group,
            "instances": self.instances,
            "scaling_activities": self.activities,
            "ready": self.ready,
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
    reply = client("ssm", cfg, region).get_parameter(Name=parameter, WithDecryption=True)
    return str(reply["Parameter"]["Value"])


def client(service: str, cfg: StatusSection, region: str | None) -> Any:
    """A boto3 client with short timeouts (status.aws_endpoint_url, else boto3's own lookup)."""
    import boto3
    from botocore.config import Config

    conf = Config(
        connect_timeout=cfg.timeout_s, read_timeout=cfg.timeout_s, retries={"max_attempts": 2}
    )
    return boto3.client(service, region_name=region, endpoint_url=cfg.aws_endpoint_url, config=conf)


class InsecureTransport(RuntimeError):
    """Sending the node token this way would expose it on the internet."""


def insecure_transport(url: str) -> str | None:
    """Why ``url`` must not carry the node token, or None when it may.

    HTTPS is fine anywhere; plain HTTP only when every address the host
    resolves to is private or loopback (inside the VPC, over a VPN, or an
    SSM port forward to localhost). An unresolvable host is not refused
    here: the request itself will fail.
    """
    parts = urlsplit(url)
    if parts.scheme == "https" or not parts.hostname:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    public = sorted(
        {ip for *_, addr in infos if not _internal(ip := str(addr[0]).split("%", 1)[0])}
    )
    if not public:
        return None
    return (
        f"refusing to send the node token over plain HTTP to {parts.hostname} "
        f"({', '.join(public)}: not a private address); use the routers' internal endpoint "
        "(terraform output router_control_url) from inside the VPC or through an SSM port "
        "forward, or an https:// URL"
    )


def _internal(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_private or addr.is_loopback or addr.is_link_local


REGISTRY_NOTES = {
    "redis": "the fleet's shared view",
    "redis-down": "its last view: it cannot reach Redis",
    "memory": "this router's own view; other routers may differ",
}


def router_nodes(url: str, token: str, timeout: float) -> NodeView:
    """``GET /nodes`` with the node token, after checking the token may travel to ``url``."""
    reason = insecure_transport(url)
    if reason:
        raise InsecureTransport(reason)
    try:  # one attempt; a redirect is not followed with the token
        return ControlClient(url, token, UrllibTransport(timeout)).nodes()
    except ControlError as exc:
        if exc.status == 401:
            raise RuntimeError("router refused the node token (401)") from None
        if exc.status >= 300:
            raise RuntimeError(f"router answered GET /nodes with HTTP {exc.status}") from None
        raise


def group_instances(cfg: StatusSection, name: str, region: str | None) -> dict[str, Any]:
    reply = client("autoscaling", cfg, region).describe_auto_scaling_groups(
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
        router_url=cfg.router_url or outputs.get("router_control_url") or outputs.get("router_url"),
        asg_name=cfg.asg_name or outputs.get("gpu_pool_asg_name"),
    )
    if report.router_url:
        try:
            reason = insecure_transport(report.router_url)
            if reason:  # checked before the token is even fetched
                raise InsecureTransport(reason)
            token = node_token(cfg, outputs, region)
            view = router_nodes(report.router_url, token, cfg.timeout_s)
            report.nodes, report.answered_by = view.nodes.to_json(), view.answered_by
            report.registry = view.registry
        except ConfigError:
            raise
        except InsecureTransport as exc:
            report.errors.append(f"router {report.router_url}: {exc}")
        except Exception as exc:
            report.errors.append(f"router {report.router_url}: {_describe(exc)}")
    else:
        report.errors.append(
            "router: no status.router_url and no router_control_url terraform output"
        )
    if report.asg_name:
        try:
            report.group = group_instances(cfg, report.asg_name, region)
            _pool_view(report, cfg, outputs, region)
        except Exception as exc:
            report.errors.append(f"autoscaling group {report.asg_name}: {_describe(exc)}")
    else:
        report.errors.append(
            "autoscaling: no status.asg_name and no gpu_pool_asg_name terraform output"
        )
    return report


def _pool_view(
    report: StatusReport, cfg: StatusSection, outputs: dict[str, Any], region: str | None
) -> None:
    """Per-instance rows (market, age, router state) and the last scaling activities."""
    assert report.group is not None and report.asg_name
    make = lambda service: client(service, cfg, region)  # noqa: E731
    ids = [i["id"] for i in report.group["instances"]]
    never_after = cfg.never_registered_after_s
    if never_after is None:
        never_after = float(outputs.get("gpu_pool_launch_hook_timeout_s") or DEFAULT_NEVER_AFTER_S)
    report.instances = join_instances(
        report.group["instances"],
        instance_details(make, ids),
        report.nodes,
        never_after_s=never_after,
        now=time.time(),
    )
    report.activities = scaling_activities(make, report.asg_name)


def _describe(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def render(report: StatusReport) -> str:
    """A terminal view of the report."""
    lines = [f"router {report.router_url or '-'}"]
    if report.answered_by or report.registry:
        note = REGISTRY_NOTES.get(report.registry or "", "")
        lines.append(
            f"  answered by {report.answered_by or '?'} (registry {report.registry or '?'}"
            + (f": {note})" if note else ")")
        )
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
            f"instances={len(g['instances'])} ready={report.ready}"
        )
        lines.extend(render_rows(report.instances))
        lines.append("scaling activities (newest first; SPOT = spot interruption)")
        lines.extend(render_activities(report.activities))
    for err in report.errors:
        lines.append(f"error: {err}")
    return "\n".join(lines)


def render_json(report: StatusReport) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=True)
