"""The deploy CLI (``spotrelay up | down | status``) as a real process, against moto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from .aws import REGION, aws_env, client

REPO = Path(__file__).resolve().parents[2]


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``spotrelay ARGS`` as a real process from the repository root (test AWS credentials)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.update(aws_env())
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "spotrelay.core.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=base,
        timeout=timeout,
    )


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def make_group(endpoint: str, name: str, desired: int) -> list[str]:
    """A launch-template Auto Scaling group of ``desired`` instances in moto; their ids."""
    ec2 = client("ec2", endpoint)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName=f"{name}-lt",
        LaunchTemplateData={"ImageId": image, "InstanceType": "g6.xlarge"},
    )
    asg = client("autoscaling", endpoint)
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": f"{name}-lt", "Version": "$Latest"},
        MinSize=0,
        MaxSize=desired + 1,
        DesiredCapacity=desired,
        AvailabilityZones=[f"{REGION}a"],
    )
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return [i["InstanceId"] for i in group["Instances"]]
