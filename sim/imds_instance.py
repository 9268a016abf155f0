"""The emulated instance itself: its static facts and the documents IMDS serves about it.

Nothing here changes with events: the identity document, the meta-data
entries and the IAM role's credentials (which only rotate with the clock, as
the real ones do every hour) are the same whatever the control API injects.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .imds_format import aws_json, iso_utc

Clock = Callable[[], float]

CREDENTIALS_ROTATE_S = 3600.0
CREDENTIALS_LIFETIME_S = 6 * 3600.0


def stable_instance_id(seed: str) -> str:
    """A real-looking 17-hex-digit instance id that is the same for the same seed."""
    return "i-0" + hashlib.sha256(seed.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class InstanceInfo:
    """The static facts of the emulated instance."""

    instance_id: str
    instance_type: str = "g6.xlarge"
    local_ipv4: str = "127.0.0.1"
    availability_zone: str = "us-east-1a"
    lifecycle: str = "spot"
    ami_id: str = "ami-0abcdef1234567890"
    account_id: str = "123456789012"
    iam_role: str | None = None
    architecture: str = "x86_64"

    @property
    def region(self) -> str:
        return self.availability_zone[:-1]

    @property
    def local_hostname(self) -> str:
        name = "ip-" + self.local_ipv4.replace(".", "-")
        if self.region == "us-east-1":
            return f"{name}.ec2.internal"
        return f"{name}.{self.region}.compute.internal"

    @property
    def mac(self) -> str:
        digest = hashlib.sha256(self.instance_id.encode()).digest()
        return ":".join(f"{b:02x}" for b in (0x0E, *digest[:5]))

    @property
    def reservation_id(self) -> str:
        return "r-0" + hashlib.sha256(b"r" + self.instance_id.encode()).hexdigest()[:16]


class InstanceDocs:
    """The instance's part of the metadata tree: static entries, identity, IAM."""

    def __init__(self, instance: InstanceInfo, clock: Clock, started_at: float) -> None:
        self.instance = instance
        self.clock = clock
        self.started_at = started_at
        self._creds_issued_at: float | None = None
        self._creds: dict[str, str] = {}

    def meta_data(self) -> dict[str, Any]:
        """The ``meta-data/`` entries the instance has whatever happens to it."""
        i = self.instance
        md: dict[str, Any] = {
            "ami-id": i.ami_id,
            "ami-launch-index": "0",
            "ami-manifest-path": "(unknown)",
            "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
            "hostname": i.local_hostname,
            "instance-action": "none",
            "instance-id": i.instance_id,
            "instance-life-cycle": i.lifecycle,
            "instance-type": i.instance_type,
            "local-hostname": i.local_hostname,
            "local-ipv4": i.local_ipv4,
            "mac": i.mac,
            "placement": {"availability-zone": i.availability_zone, "region": i.region},
            "reservation-id": i.reservation_id,
            "security-groups": "spotrelay-gpu-pool",
            "services": {"domain": "amazonaws.com", "partition": "aws"},
        }
        if i.iam_role:
            md["iam"] = {
                "info": self._iam_info(),
                "security-credentials": {i.iam_role: self._credentials()},
            }
        return md

    def identity_document(self) -> str:
        i = self.instance
        return aws_json(
            {
                "accountId": i.account_id,
                "architecture": i.architecture,
                "availabilityZone": i.availability_zone,
                "billingProducts": None,
                "devpayProductCodes": None,
                "marketplaceProductCodes": None,
                "imageId": i.ami_id,
                "instanceId": i.instance_id,
                "instanceType": i.instance_type,
                "kernelId": None,
                "pendingTime": iso_utc(self.started_at),
                "privateIp": i.local_ipv4,
                "ramdiskId": None,
                "region": i.region,
                "version": "2017-09-30",
            }
        )

    def _iam_info(self) -> str:
        i = self.instance
        profile_id = "AIPA" + hashlib.sha256(i.instance_id.encode()).hexdigest()[:17].upper()
        return aws_json(
            {
                "Code": "Success",
                "LastUpdated": iso_utc(self.started_at),
                "InstanceProfileArn": f"arn:aws:iam::{i.account_id}:instance-profile/{i.iam_role}",
                "InstanceProfileId": profile_id,
            }
        )

    def _credentials(self) -> str:
        """Fake temporary credentials in IMDS's format, rotated hourly like the real ones."""
        now = self.clock()
        if self._creds_issued_at is None or now - self._creds_issued_at >= CREDENTIALS_ROTATE_S:
            alnum = string.ascii_uppercase + string.digits
            self._creds_issued_at = now
            self._creds = {
                "AccessKeyId": "ASIA" + "".join(secrets.choice(alnum) for _ in range(16)),
                "SecretAccessKey": base64.b64encode(secrets.token_bytes(30)).decode(),
                "Token": base64.b64encode(secrets.token_bytes(120)).decode(),
            }
        issued = self._creds_issued_at
        return aws_json(
            {
                "Code": "Success",
                "LastUpdated": iso_utc(issued),
                "Type": "AWS-HMAC",
                **self._creds,
                "Expiration": iso_utc(issued + CREDENTIALS_LIFETIME_S),
            }
        )
