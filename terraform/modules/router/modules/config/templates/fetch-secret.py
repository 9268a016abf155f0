"""Copy an SSM SecureString parameter into a root-only file, retrying.

Usage: fetch-secret PARAMETER REGION DEST [ENV_NAME]
With ENV_NAME the file holds ENV_NAME=value (a systemd EnvironmentFile).
Runs under the spotrelay virtualenv's Python, which has boto3.
"""

import os
import sys
import time

import boto3


def main() -> int:
    name, region, dest = sys.argv[1:4]
    env_name = sys.argv[4] if len(sys.argv) > 4 else None
    client = boto3.client("ssm", region_name=region)
    for attempt in range(20):
        try:
            reply = client.get_parameter(Name=name, WithDecryption=True)
            value = reply["Parameter"]["Value"]
            break
        except Exception as exc:  # IAM propagation and throttling are transient
            print(f"fetch-secret: {name}: {type(exc).__name__}; retrying", file=sys.stderr)
            time.sleep(min(2**attempt, 30))
    else:
        print(f"fetch-secret: giving up on {name}", file=sys.stderr)
        return 1
    text = f"{env_name}={value}\n" if env_name else value + "\n"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
