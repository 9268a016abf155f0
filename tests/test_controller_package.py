"""The controller's Lambda package is the zip committed with the gpu-pool module
(``deploy/controller_zip.py``: spotrelay/controller/*.py and the spotrelay/core modules it
imports: config, protocol, interruptions, eventbridge_events, control_api, control_client).
Unpacked alone, it must import with nothing else of spotrelay and no third-party module but
boto3 (which the Lambda Python runtime provides, and which the handler imports only when it
builds its clients).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from spotrelay.deploy.controller_zip import PACKAGE_PATH

REPO = Path(__file__).resolve().parents[1]


def test_package_imports_alone(tmp_path: Path) -> None:
    tf = (REPO / "terraform/modules/gpu-pool/fallback.tf").read_text()
    assert "package/spotrelay-controller.zip" in tf, "the module deploys the committed zip"
    with zipfile.ZipFile(PACKAGE_PATH) as zf:
        zf.extractall(tmp_path)
    probe = (
        "import sys, spotrelay.controller.handler, spotrelay.controller.queue;"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('spotrelay', 'boto3', 'botocore', 'yaml', 'requests', 'flask'));"
        "print(' '.join(mods))"
    )
    # -S: no site-packages (so neither the installed spotrelay nor boto3), -I: isolated.
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {probe}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    assert "spotrelay.controller.handler" in loaded
    assert not [m for m in loaded if m.split(".")[0] != "spotrelay"], loaded
    assert {m.split(".")[1] for m in loaded if "." in m} <= {"controller", "core"}
