"""Shared pieces of the controller's tests against moto (server mode) and a real router.

A mixed-instances group like the gpu-pool module's (:func:`make_group`, with
spot instances joined by :func:`attach_spot`), the documented EventBridge
events as fixtures (:func:`documented`), and nodes registered with a router
(:func:`register`). The modules take the test AWS credentials from
conftest.py's ``fake_aws_credentials`` fixture (``pytest.mark.usefixtures``).

moto cannot apply a *partial* mixed-instances update (AWS leaves what the
request omits unchanged; moto requires the launch template). The controller
deliberately omits it (naming the template would need ``ec2:RunInstances`` and
``iam:PassRole``), so :class:`PartialUpdateFront` sits in front of moto: it
records each ``UpdateAutoScalingGroup`` as sent, adds the group's current
launch template the way AWS keeps it, and forwards every call to moto.
"""

from __future__ import annotations

import json
from pathlib import Path

from spotrelay.sim.loopback import free_port

from .aws import REGION, client
from .services import ROUTER_TOKEN, MotoFront, register_node

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eventbridge"
INSTANCE = "i-1234567890abcdef0"


def documented(name: str, instance_id: str = INSTANCE, **detail: str) -> dict:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    key = "EC2InstanceId" if "EC2InstanceId" in doc["detail"] else "instance-id"
    doc["detail"].update({key: instance_id, **detail})
    return doc


class PartialUpdateFront(MotoFront):
    """An HTTP front for moto giving ``UpdateAutoScalingGroup`` AWS's partial-update semantics."""

    def __init__(self, moto: str) -> None:
        self.updates: list[dict[str, str]] = []  # UpdateAutoScalingGroup forms, as sent
        super().__init__(moto)

    def rewrite(self, form: dict[str, str]) -> dict[str, str]:
        if form.get("Action") != "UpdateAutoScalingGroup":
            return form
        self.updates.append(dict(form))
        return self.keep_template(form)

    def keep_template(self, form: dict[str, str]) -> dict[str, str]:
        """Add the group's launch template and overrides when the update leaves them out."""
        prefix = "MixedInstancesPolicy."
        if not any(k.startswith(prefix) for k in form) or any(
            k.startswith(prefix + "LaunchTemplate.") for k in form
        ):
            return form
        group = group_of(self.moto, form["AutoScalingGroupName"])
        template = group["MixedInstancesPolicy"]["LaunchTemplate"]
        spec = template["LaunchTemplateSpecification"]
        out = dict(form)
        lt = prefix + "LaunchTemplate."
        out[lt + "LaunchTemplateSpecification.LaunchTemplateId"] = spec["LaunchTemplateId"]
        out[lt + "LaunchTemplateSpecification.Version"] = spec.get("Version", "$Default")
        for i, override in enumerate(template.get("Overrides", []), start=1):
            out[f"{lt}Overrides.member.{i}.InstanceType"] = override["InstanceType"]
        return out


_groups = iter(range(1000))


def make_group(endpoint: str, base: int = 0, desired: int = 0) -> str:
    """A mixed-instances group like the gpu-pool module's, in moto.

    moto launches ``desired`` instances without a market (on-demand, as EC2
    reports them); spot instances join with :func:`attach_spot`.
    """
    name = f"llm-gpu-{next(_groups)}"
    ec2 = client("ec2", endpoint)
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{name}-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g6.xlarge"},
    )["LaunchTemplate"]
    client("autoscaling", endpoint).create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=0,
        MaxSize=8,
        DesiredCapacity=desired,
        AvailabilityZones=[f"{REGION}a"],
        CapacityRebalance=True,
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": template["LaunchTemplateId"],
                    "Version": "$Latest",
                },
                "Overrides": [{"InstanceType": "g6.xlarge"}, {"InstanceType": "g5.xlarge"}],
            },
            "InstancesDistribution": {
                "OnDemandAllocationStrategy": "prioritized",
                "OnDemandBaseCapacity": base,
                "OnDemandPercentageAboveBaseCapacity": 0,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
        },
    )
    return name


def attach_spot(endpoint: str, name: str, count: int) -> list[str]:
    """Spot instances (EC2 reports ``InstanceLifecycle: spot``) attached to the group."""
    ec2 = client("ec2", endpoint)
    launched = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=count,
        MaxCount=count,
        InstanceType="g6.xlarge",
        InstanceMarketOptions={"MarketType": "spot"},
    )
    ids = [i["InstanceId"] for i in launched["Instances"]]
    client("autoscaling", endpoint).attach_instances(AutoScalingGroupName=name, InstanceIds=ids)
    return ids


def group_of(endpoint: str, name: str) -> dict:
    groups = client("autoscaling", endpoint).describe_auto_scaling_groups(
        AutoScalingGroupNames=[name]
    )
    return groups["AutoScalingGroups"][0]


def base_of(endpoint: str, name: str) -> int:
    dist = group_of(endpoint, name)["MixedInstancesPolicy"]["InstancesDistribution"]
    return int(dist["OnDemandBaseCapacity"])


def register(router_url: str, node: str, instance_id: str, state: str = "ready") -> None:
    register_node(
        router_url,
        ROUTER_TOKEN,
        node,
        f"http://127.0.0.1:{free_port()}",
        "m",
        state=state,
        instance_id=instance_id,
    )
