"""Find the Terraform (or OpenTofu) executable ``spotrelay up|down|status`` drives.

Order: the configured binary (``terraform.binary``, a path or a name looked
up on PATH), else ``terraform`` on PATH, else ``tofu`` on PATH. Both speak the
same CLI for everything spotrelay runs (init, plan, apply, destroy, output).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from .config import ConfigError

DEFAULT_NAMES: tuple[str, ...] = ("terraform", "tofu")


def find_binary(
    configured: str | None = None,
    names: Sequence[str] = DEFAULT_NAMES,
    path: str | None = None,
) -> str:
    """The absolute path of the executable to run, or a ConfigError saying what to do."""
    if configured:
        if os.sep in configured or (os.altsep and os.altsep in configured):
            if os.path.isfile(configured) and os.access(configured, os.X_OK):
                return os.path.abspath(configured)
            raise ConfigError("terraform.binary", "not an executable file", configured)
        found = shutil.which(configured, path=path)
        if found:
            return found
        raise ConfigError("terraform.binary", "not found on PATH", configured)
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    raise ConfigError(
        "terraform.binary",
        "neither terraform nor tofu is on PATH; install one or set terraform.binary",
    )
