"""Configuration schema of ``spotrelay sim imds`` (YAML sections ``server`` and ``instance``).

Every key can also be set with ``SPOTRELAY_<SECTION>_<KEY>`` or the matching
command-line flag; the flags are what tests and the demo use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spotrelay.core.config import ConfigError, setting

from .imds_event_state import TARGET_LIFECYCLE_STATES

DEFAULT_PORT = 1338

LIFECYCLES = ("spot", "on-demand", "scheduled", "capacity-block")
NOT_IN_ASG = "none"

_INSTANCE_ID_RE = re.compile(r"^i-[0-9A-Za-z]{1,32}$")
_AZ_RE = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+[a-z]$")
_IPV4_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_AMI_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
_ROLE_RE = re.compile(r"^[\w+=,.@-]{1,64}$")


@dataclass
class Server:
    host: str = setting("127.0.0.1", help="address to listen on (real IMDS: 169.254.169.254:80)")
    port: int = setting(DEFAULT_PORT, min=1, max=65535, help="port to listen on")


@dataclass
class Instance:
    id: str | None = setting(
        None, help="instance-id; default: stable per host:port, e.g. i-0c1f2a3b4d5e6f708"
    )
    type: str = setting("g6.xlarge", help="instance-type")
    local_ipv4: str = setting("127.0.0.1", help="local-ipv4 (the agent advertises it)")
    az: str = setting("us-east-1a", help="placement/availability-zone; region = az minus letter")
    lifecycle: str = setting("spot", choices=LIFECYCLES, help="instance-life-cycle")
    ami_id: str = setting("ami-0abcdef1234567890", help="ami-id")
    account_id: str = setting("123456789012", help="accountId in the identity document")
    iam_role: str | None = setting(
        None, help="serve iam/security-credentials/<role> with fake credentials"
    )
    target_lifecycle_state: str = setting(
        "InService",
        choices=(*TARGET_LIFECYCLE_STATES, NOT_IN_ASG),
        help="initial autoscaling/target-lifecycle-state; 'none' = not in an ASG (404)",
    )

    def validate(self) -> None:
        if self.id is not None and not _INSTANCE_ID_RE.match(self.id):
            raise ConfigError("instance.id", "expected i-<letters/digits>", self.id)
        if not _AZ_RE.match(self.az):
            raise ConfigError(
                "instance.az", "expected an availability zone like us-east-1a", self.az
            )
        m = _IPV4_RE.match(self.local_ipv4)
        if not m or any(int(part) > 255 for part in m.groups()):
            raise ConfigError("instance.local_ipv4", "expected an IPv4 address", self.local_ipv4)
        if not _AMI_RE.match(self.ami_id):
            raise ConfigError("instance.ami_id", "expected ami-<8 or 17 hex digits>", self.ami_id)
        if not re.fullmatch(r"\d{12}", self.account_id):
            raise ConfigError("instance.account_id", "expected 12 digits", self.account_id)
        if self.iam_role is not None and not _ROLE_RE.match(self.iam_role):
            raise ConfigError("instance.iam_role", "not a valid IAM role name", self.iam_role)
        if not self.type or "." not in self.type:
            raise ConfigError("instance.type", "expected a type like g6.xlarge", self.type)


@dataclass
class ImdsEmulatorConfig:
    server: Server = setting(default_factory=Server)
    instance: Instance = setting(default_factory=Instance)
