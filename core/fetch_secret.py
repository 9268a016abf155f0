"""Copy an SSM SecureString parameter into a root-only file, retrying (boot scripts).

Usage: ``python -m spotrelay.core.fetch_secret PARAMETER REGION DEST [ENV_NAME]``.
With ENV_NAME the file holds ``ENV_NAME=value`` (a systemd EnvironmentFile).

The GPU nodes' and routers' boot scripts run it from the spotrelay virtualenv.
It lives in the package (not in each Terraform module) so both roles share
one copy, and it uses botocore, which both the ``agent`` and ``router``
extras install: nodes carry no boto3. ``AWS_ENDPOINT_URL_SSM`` (botocore's own
setting) points it at a test endpoint.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from spotrelay.core.retry import retry_until

USAGE = "usage: python -m spotrelay.core.fetch_secret PARAMETER REGION DEST [ENV_NAME]"


def read_parameter(name: str, region: str) -> str:
    import botocore.session

    client: Any = botocore.session.get_session().create_client("ssm", region_name=region)
    value: str = client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    return value


def write_secret(dest: str, text: str) -> None:
    """Write atomically, mode 0600 from the first byte."""
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = dest + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, dest)


def main(
    argv: Sequence[str] | None = None,
    *,
    attempts: int = 20,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (3, 4):
        print(USAGE, file=sys.stderr)
        return 2
    name, region, dest = args[:3]
    env_name = args[3] if len(args) == 4 else None
    delays = (min(2**n, 30) for n in itertools.count())

    def retrying(exc: BaseException, delay: float) -> None:
        # The exception's type only: its text may quote the request.
        why = type(exc).__name__
        print(f"fetch-secret: {name}: {why}; retrying in {delay:g} s", file=sys.stderr)

    try:  # every error: IAM propagation and throttling are transient at boot
        value = retry_until(
            lambda: read_parameter(name, region),
            retry_on=Exception,
            next_delay=lambda: next(delays),
            attempts=attempts,
            on_retry=retrying,
            sleep=sleep,
        )
    except Exception as exc:
        print(f"fetch-secret: giving up on {name}: {type(exc).__name__}", file=sys.stderr)
        return 1
    write_secret(dest, f"{env_name}={value}\n" if env_name else value + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
