"""``spotrelay agent|router install-unit``: put the packaged systemd unit and config in place.

The units, the agent's polkit rule and the example configs ship inside the
package (``pip show -f spotrelay`` lists them), so a host that installed the
wheel has everything it needs without a checkout. Files that an operator
edits (the YAML config) are never overwritten unless asked; the unit and the
polkit rule are ours and are replaced, so an upgrade brings the new unit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path


@dataclass(frozen=True)
class UnitFile:
    package: str  # the package folder holding it
    name: str
    dest: str  # absolute path on the host
    mode: int = 0o644
    operator_owned: bool = False  # an edited config: kept unless --force


UNIT_FILES: dict[str, tuple[UnitFile, ...]] = {
    "agent": (
        UnitFile(
            "spotrelay.agent.systemd",
            "spotrelay-agent.service",
            "/etc/systemd/system/spotrelay-agent.service",
        ),
        UnitFile(
            "spotrelay.agent.systemd",
            "50-spotrelay-agent.rules",
            "/etc/polkit-1/rules.d/50-spotrelay-agent.rules",
        ),
        UnitFile(
            "spotrelay.agent.examples",
            "agent.yaml",
            "/etc/spotrelay/agent.yaml",
            0o640,
            operator_owned=True,
        ),
    ),
    "router": (
        UnitFile(
            "spotrelay.router.systemd",
            "spotrelay-router.service",
            "/etc/systemd/system/spotrelay-router.service",
        ),
        UnitFile(
            "spotrelay.router.examples",
            "router.yaml",
            "/etc/spotrelay/router.yaml",
            0o640,
            operator_owned=True,
        ),
    ),
}


def install_units(role: str, root: Path = Path("/"), force: bool = False) -> list[str]:
    """Copy the role's files under ``root``; returns one line per file saying what happened."""
    lines = []
    for unit in UNIT_FILES[role]:
        dest = root / unit.dest.lstrip("/")
        if unit.operator_owned and dest.exists() and not force:
            lines.append(f"kept      {dest} (exists; --force replaces it)")
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with as_file(files(unit.package) / unit.name) as src:
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.copyfile(src, tmp)
            tmp.chmod(unit.mode)
            tmp.replace(dest)
        lines.append(f"installed {dest}")
    service = f"spotrelay-{role}.service"
    lines.append(f"next: systemctl daemon-reload && systemctl enable --now {service}")
    return lines
