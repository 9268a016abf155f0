"""Attach this router slot's fixed network interface to this instance.

Usage: attach-eni NETWORK_INTERFACE_ID REGION
Agents heartbeat every router by the interface's fixed private address, so
a replacement instance takes the interface over (waiting for the previous
instance to release it). Runs under the spotrelay virtualenv's Python.
"""

import sys
import time
import urllib.request

import boto3

IMDS = "http://169.254.169.254/latest"


def instance_id() -> str:
    put = urllib.request.Request(
        f"{IMDS}/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
    )
    token = urllib.request.urlopen(put, timeout=5).read().decode()
    get = urllib.request.Request(
        f"{IMDS}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}
    )
    return urllib.request.urlopen(get, timeout=5).read().decode()


def main() -> int:
    eni, region = sys.argv[1:3]
    me = instance_id()
    ec2 = boto3.client("ec2", region_name=region)
    for attempt in range(60):
        iface = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]
        attached_to = iface.get("Attachment", {}).get("InstanceId")
        if attached_to == me:
            return 0
        if iface["Status"] == "available":
            try:
                ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=me, DeviceIndex=1)
            except Exception as exc:  # a race with the previous owner: retry
                print(f"attach-eni: {type(exc).__name__}; retrying", file=sys.stderr)
        time.sleep(min(5 + attempt, 15))
    print(f"attach-eni: {eni} still not attached to {me}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
