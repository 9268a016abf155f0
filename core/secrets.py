"""Loading the shared node token from config or a file, never from logs."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError


def read_token(value: str | None, file: str | None, key: str) -> str | None:
    """The token given inline, else the first line of ``file`` if it exists.

    ``key`` names the config key for error messages. An inline value wins so
    tests and local runs need no file; production uses the file (from SSM).
    """
    if value:
        return value.strip()
    if not file:
        return None
    path = Path(file)
    if not path.exists():
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}_file", f"cannot read: {exc.strerror}", str(path)) from None
    if not token:
        raise ConfigError(f"{key}_file", "file is empty", str(path))
    return token
