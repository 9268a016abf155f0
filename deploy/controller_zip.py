"""The capacity controller's Lambda package, built reproducibly from this checkout.

The gpu-pool module deploys a zip that is committed next to it
(``terraform/modules/gpu-pool/package/``) instead of zipping the sources at
plan time: a zip written under ``.terraform`` during ``plan`` is missing when
a saved plan is applied on another machine, and packaging at plan time needs
the hashicorp/archive provider. The same sources always give the same bytes
(sorted entries, fixed timestamps and modes, no compression), so a test can
check that the committed zip is exactly what the sources build
(``make controller-zip`` rewrites it). It is a build step of what Terraform
deploys, so it lives with the deploy tool; in controller/ it would ship in the zip.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_PATH = REPO / "terraform/modules/gpu-pool/package/spotrelay-controller.zip"
# Inside the zip: spotrelay.controller and the core modules it imports (the
# instance-id check, the settings loader, the interruption events and their
# EventBridge parser, the routers' control-plane client; PyYAML is not needed:
# core.config imports it only to read YAML). boto3 comes with the Lambda Python runtime.
CORE_FILES = (
    "__init__.py",
    "config.py",
    "control_api.py",
    "control_client.py",
    "eventbridge_events.py",
    "interruptions.py",
    "protocol.py",
)
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold


def sources(repo: Path = REPO) -> dict[str, Path]:
    """Archive name -> source file, in archive order."""
    files = {
        f"spotrelay/controller/{p.name}": p for p in sorted((repo / "controller").glob("*.py"))
    }
    files.update({f"spotrelay/core/{name}": repo / "core" / name for name in CORE_FILES})
    return files


def build(repo: Path = REPO) -> bytes:
    """The package's bytes: identical for identical sources."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, path in sources(repo).items():
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.create_system = 3  # Unix, so the mode above is honoured
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def stale(path: Path = PACKAGE_PATH, repo: Path = REPO) -> bool:
    """True when the committed package is not what the sources build."""
    return not path.exists() or path.read_bytes() != build(repo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_PATH, help="where to write the zip")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the zip differs from the sources"
    )
    args = parser.parse_args(argv)
    if args.check:
        if stale(args.out):
            print(f"{args.out} is stale: run `make controller-zip` and commit it")
            return 1
        print(f"{args.out} matches the sources")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(build())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
