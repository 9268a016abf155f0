"""``spotrelay up`` deploys what is in the checkout: wheel → artifacts bucket → instances.

The instances install spotrelay from one S3 object, by its exact key and
sha256 (the boot scripts check the hash before pip sees the file), so a
deployment runs the code it was started from — never whatever a package
index serves under the name. The wheel is built reproducibly
(``SOURCE_DATE_EPOCH``): the same checkout gives the same bytes, the same
key and the same user data, so re-running ``up`` replaces no node.

The bucket is created by Terraform (``artifacts.tf`` of the configuration)
and must exist before the upload, so ``up`` applies that file's resources
first (``-target`` each, read from the file, so the list cannot drift), then
uploads, then plans and applies everything (docs/deploy.md, section 3).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTIFACTS_FILE = "artifacts.tf"
KEY_PREFIX = "spotrelay"
# 1980-01-01, the earliest time a zip entry can carry: any fixed value makes
# the wheel reproducible; a caller's SOURCE_DATE_EPOCH wins.
DEFAULT_SOURCE_DATE_EPOCH = "315532800"
RESOURCE = re.compile(r'^resource\s+"([\w-]+)"\s+"([\w-]+)"', re.M)


class ArtifactError(RuntimeError):
    """Building, reading or uploading the wheel failed; the message says which."""


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str

    @property
    def key(self) -> str:
        """Content-addressed: a changed checkout gets a new key, an unchanged one the same."""
        return f"{KEY_PREFIX}/{self.sha256}/{self.path.name}"

    def tfvar(self) -> dict[str, str]:
        return {"key": self.key, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_root() -> Path:
    """The checkout this spotrelay runs from (where pyproject.toml names spotrelay)."""
    root = Path(__file__).resolve().parents[1]
    project = root / "pyproject.toml"
    if not project.is_file() or 'name = "spotrelay"' not in project.read_text():
        raise ArtifactError(
            f"no spotrelay checkout at {root} (installed from a wheel?): pass --wheel PATH"
        )
    return root


def build_wheel(root: Path, outdir: Path, echo: Callable[[str], None] = print) -> Path:
    """``python -m build --wheel`` of ``root`` into ``outdir``, reproducibly.

    setuptools' ``build/`` directory is removed first: it keeps files deleted
    from the checkout, and they would ship in the wheel.
    """
    import shutil

    shutil.rmtree(root / "build", ignore_errors=True)
    env = dict(os.environ)
    env.setdefault("SOURCE_DATE_EPOCH", DEFAULT_SOURCE_DATE_EPOCH)
    argv = [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(root)]
    echo(f"==> wheel: python -m build --wheel {root}")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    wheels = sorted(outdir.glob("spotrelay-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise ArtifactError(f"building the wheel failed (exit {proc.returncode}): {tail}")
    return wheels[0]


def prepare_wheel(given: str | None, workdir: Path, echo: Callable[[str], None] = print) -> Wheel:
    """The wheel to deploy: ``--wheel PATH``, else built from the checkout."""
    if given:
        path = Path(given).expanduser().resolve()
        if not path.is_file() or path.suffix != ".whl" or not path.name.startswith("spotrelay-"):
            raise ArtifactError(f"--wheel {given}: not a spotrelay-*.whl file")
    else:
        path = build_wheel(source_root(), workdir, echo)
    wheel = Wheel(path, sha256_file(path))
    echo(f"    {wheel.path.name} sha256 {wheel.sha256}")
    return wheel


def artifact_targets(directory: Path) -> list[str]:
    """``-target=`` arguments for every resource of ``artifacts.tf`` ([] without the file)."""
    path = directory / ARTIFACTS_FILE
    if not path.is_file():
        return []
    return [f"-target={kind}.{name}" for kind, name in RESOURCE.findall(path.read_text())]


def upload(s3: Any, bucket: str, wheel: Wheel, echo: Callable[[str], None] = print) -> bool:
    """Put the wheel at its key unless that exact object is there; True if uploaded.

    S3 checks the ChecksumSHA256 on receipt, so a corrupted upload is refused
    rather than stored; the hex digest also goes into the object's metadata.
    """
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=wheel.key)
        if head.get("Metadata", {}).get("sha256") == wheel.sha256:
            echo(f"==> upload: s3://{bucket}/{wheel.key} already there")
            return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise ArtifactError(f"s3://{bucket}/{wheel.key}: {exc}") from exc
    checksum = base64.b64encode(bytes.fromhex(wheel.sha256)).decode()
    echo(f"==> upload: s3://{bucket}/{wheel.key}")
    try:
        s3.put_object(
            Bucket=bucket,
            Key=wheel.key,
            Body=wheel.path.read_bytes(),
            ChecksumSHA256=checksum,
            Metadata={"sha256": wheel.sha256},
            ContentType="application/zip",
        )
    except ClientError as exc:
        raise ArtifactError(f"uploading to s3://{bucket}/{wheel.key}: {exc}") from exc
    return True


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="spotrelay-wheel-"))
