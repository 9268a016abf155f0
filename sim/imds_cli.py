"""``spotrelay sim imds``: an EC2 instance metadata service (IMDSv2) emulator.

Top-level imports stay light (argparse only); the server and aiohttp are
imported by the handler.
"""

from __future__ import annotations

import argparse

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


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from spotrelay.core.config import describe

    from .imds_settings import (
        DEFAULT_PORT,
        LIFECYCLES,
        NOT_IN_ASG,
        TARGET_LIFECYCLE_STATES,
        ImdsEmulatorConfig,
    )

    p = sub.add_parser(
        "imds",
        parents=[common],
        help="EC2 instance metadata (IMDSv2) emulator with spot/ASG event controls",
        description=DESCRIPTION,
        epilog=describe(ImdsEmulatorConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"listen port (default {DEFAULT_PORT})")
    p.add_argument(
        "--instance-id", help="instance-id (default: stable per host:port, i-0 + 16 hex digits)"
    )
    p.add_argument("--instance-type", help="instance-type (default g6.xlarge)")
    p.add_argument("--local-ipv4", help="local-ipv4 (default 127.0.0.1)")
    p.add_argument("--az", help="availability zone; the region is derived (default us-east-1a)")
    p.add_argument("--lifecycle", choices=LIFECYCLES, help="instance-life-cycle (default spot)")
    p.add_argument("--ami-id", help="ami-id")
    p.add_argument("--account-id", help="accountId of the identity document (12 digits)")
    p.add_argument(
        "--iam-role", metavar="NAME", help="serve fake credentials at iam/security-credentials/NAME"
    )
    p.add_argument(
        "--target-lifecycle-state",
        choices=(*TARGET_LIFECYCLE_STATES, NOT_IN_ASG),
        help="initial autoscaling/target-lifecycle-state (default InService; "
        "'none' = instance not in an Auto Scaling group)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from spotrelay.core.config import load

    from .imds_instance import InstanceInfo, stable_instance_id
    from .imds_server import serve
    from .imds_settings import NOT_IN_ASG, ImdsEmulatorConfig
    from .imds_state import ImdsState

    cfg = load(
        ImdsEmulatorConfig,
        args.config,
        overrides={
            "server": {"host": args.host, "port": args.port},
            "instance": {
                "id": args.instance_id,
                "type": args.instance_type,
                "local_ipv4": args.local_ipv4,
                "az": args.az,
                "lifecycle": args.lifecycle,
                "ami_id": args.ami_id,
                "account_id": args.account_id,
                "iam_role": args.iam_role,
                "target_lifecycle_state": args.target_lifecycle_state,
            },
        },
    )
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
