"""The deploy CLI (``spotrelay up | down | preflight | scale | status``) as a real process,
against moto, and the deployment fixtures its tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from spotrelay.deploy.pool_plan import module_source

from .aws import REGION, aws_env, client

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "terraform" / "examples" / "complete"
CONFIG_MODULE = REPO / "terraform" / "modules" / "gpu-pool" / "modules" / "config"
ROUTER_CONFIG_MODULE = REPO / "terraform" / "modules" / "router" / "modules" / "config"
FIXTURE = REPO / "tests" / "fixtures" / "deploy_offline"
#: the test credentials as environment variables (for processes the tests start)
AWS_ENV = aws_env()


def aws(service: str, endpoint: str) -> Any:
    """A boto3 client at ``endpoint`` with the test credentials (see :func:`.aws.client`)."""
    return client(service, endpoint)


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


def minimal(**extra: object) -> dict:
    """The smallest deployment YAML ``spotrelay up`` accepts, plus ``extra`` sections."""
    doc: dict = {
        "deployment": {
            "name": "t1",
            "region": REGION,
            "vpc_id": "vpc-0123456789abcdef0",
            "private_subnet_ids": ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"],
            "public_subnet_ids": ["subnet-0cccccccccccccccc", "subnet-0dddddddddddddddd"],
            "allowed_cidrs": ["203.0.113.0/24"],
        },
        "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "served_name": "qwen"},
    }
    doc.update(extra)
    return doc


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


def stand_in(tmp_path: Path) -> Path:
    """The provider-free configuration, beside examples/complete's variables.tf."""
    d = tmp_path / "deploy"
    d.mkdir()
    main = (FIXTURE / "main.tf").read_text()
    # Relative sources: an absolute one is installed alone, without ../shared.
    main = main.replace("ROUTER_CONFIG_MODULE", module_source(ROUTER_CONFIG_MODULE, d))
    (d / "main.tf").write_text(main.replace("CONFIG_MODULE", module_source(CONFIG_MODULE, d)))
    (d / "artifacts.tf").write_text((FIXTURE / "artifacts.tf").read_text())
    (d / "variables.tf").write_text((EXAMPLE / "variables.tf").read_text())
    return d


def state_resources(d: Path) -> list[str]:
    path = d / "terraform.tfstate"
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    managed = [r for r in state.get("resources", []) if r["mode"] == "managed"]
    return [f"{r['type']}.{r['name']}" for r in managed]


def fake_wheel(directory: Path, version: str = "0.0.0") -> Path:
    """A tiny valid spotrelay wheel (one module): for tests that move or fetch it."""
    import zipfile

    path = directory / f"spotrelay-{version}-py3-none-any.whl"
    info = f"spotrelay-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("spotrelay_fake/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: spotrelay\nVersion: {version}\n"
        )
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")  # fmt: skip
        z.writestr(f"{info}/RECORD", "")
    return path


def user_data_file(user_data: str, path: str) -> str:
    """The content cloud-init writes to ``path`` from rendered #cloud-config user data."""
    doc = yaml.safe_load(user_data)
    return next(f["content"] for f in doc["write_files"] if f["path"] == path)
