"""``spotrelay sim imds``: an EC2 instance metadata service (IMDSv2) emulator.

Top-level imports stay light (argparse only); the server and aiohttp are
imported by the handler.
"""

from __future__ import annotations

import argparse

from spotrelay.core.cli import add_command
from spotrelay.core.config_flags import Flag, overrides

DESCRIPTION = """\
Serve the EC2 instance metadata service (IMDSv2, tokens required) on loopback,
with a control API under /_control/ that triggers spot interruption notices,
rebalance recommendations, Auto Scaling target lifecycle states, scheduled
maintenance events and IMDS outages. See docs/imds-emulator.md.

examples:
  spotrelay sim imds --port 8102
  TOKEN=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \\
          http://127.0.0.1:8102/latest/api/token)
  curl -H "X-aws-ec2-metadata-token: $TOKEN" http://127.0.0.1:8102/latest/meta-data/instance-id
  curl -X POST -d '{"action": "terminate", "lead_s": 120}' http://127.0.0.1:8102/_control/spot
"""


def flags() -> dict[str, Flag]:
    """The flags, each overriding one key of :class:`.imds_settings.ImdsEmulatorConfig`."""
    from .imds_settings import DEFAULT_PORT, LIFECYCLES, NOT_IN_ASG, TARGET_LIFECYCLE_STATES

    return {
        "host": Flag("server.host", "listen address (default 127.0.0.1)"),
        "port": Flag("server.port", f"listen port (default {DEFAULT_PORT})", type=int),
        "instance_id": Flag(
            "instance.id", "instance-id (default: stable per host:port, i-0 + 16 hex digits)"
        ),
        "instance_type": Flag("instance.type", "instance-type (default g6.xlarge)"),
        "local_ipv4": Flag("instance.local_ipv4", "local-ipv4 (default 127.0.0.1)"),
        "az": Flag("instance.az", "availability zone; the region is derived (default us-east-1a)"),
        "lifecycle": Flag(
            "instance.lifecycle", "instance-life-cycle (default spot)", choices=LIFECYCLES
        ),
        "ami_id": Flag("instance.ami_id", "ami-id"),
        "account_id": Flag("instance.account_id", "accountId of the identity document (12 digits)"),
        "iam_role": Flag(
            "instance.iam_role",
            "serve fake credentials at iam/security-credentials/NAME",
            metavar="NAME",
        ),
        "target_lifecycle_state": Flag(
            "instance.target_lifecycle_state",
            "initial autoscaling/target-lifecycle-state (default InService; "
            "'none' = instance not in an Auto Scaling group)",
            choices=(*TARGET_LIFECYCLE_STATES, NOT_IN_ASG),
        ),
    }


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from .imds_settings import ImdsEmulatorConfig

    add_command(
        sub,
        common,
        "imds",
        help="EC2 instance metadata (IMDSv2) emulator with spot/ASG event controls",
        description=DESCRIPTION,
        config=ImdsEmulatorConfig,
        flags=flags(),
        handler=run,
    )


def run(args: argparse.Namespace) -> int:
    from spotrelay.core.config import load

    from .imds_instance import InstanceInfo, stable_instance_id
    from .imds_server import serve
    from .imds_settings import NOT_IN_ASG, ImdsEmulatorConfig
    from .imds_state import ImdsState

    cfg = load(ImdsEmulatorConfig, args.config, overrides=overrides(args, flags()))
    inst = cfg.instance
    instance = InstanceInfo(
        instance_id=inst.id or stable_instance_id(f"{cfg.server.host}:{cfg.server.port}"),
        instance_type=inst.type,
        local_ipv4=inst.local_ipv4,
        availability_zone=inst.az,
        lifecycle=inst.lifecycle,
        ami_id=inst.ami_id,
        account_id=inst.account_id,
        iam_role=inst.iam_role,
    )
    target = None if inst.target_lifecycle_state == NOT_IN_ASG else inst.target_lifecycle_state
    serve(ImdsState(instance, target_lifecycle_state=target), cfg.server.host, cfg.server.port)
    return 0
