"""Typed YAML configuration with ``SPOTRELAY_<SECTION>_<KEY>`` environment overrides.

Each component declares its configuration as nested dataclasses (one per YAML
section). This module turns a YAML file, the environment and command-line
overrides into an instance of that schema, in that order of precedence, and
reports the first problem as a one-line :class:`ConfigError` naming the key:
operators read the message at 3 a.m., so it never becomes a traceback.

Every component loads its settings here, the controller included: it has no
YAML file and its Lambda package has no PyYAML, so ``yaml`` is imported only
where a YAML value is read (a file, or a mapping given in the environment).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "SPOTRELAY_"

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; ``str()`` is a single line naming the key."""

    def __init__(self, key: str, message: str, value: Any = dataclasses.MISSING) -> None:
        self.key = key
        shown = "" if value is dataclasses.MISSING else f" = {value!r}"
        super().__init__(f"{key}{shown}: {message}")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    help: str = "",
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    secret: bool = False,
) -> Any:
    """A dataclass field with the metadata the loader validates and ``--help`` prints."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "secret": secret}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def env_name(section: str | None, key: str) -> str:
    """``SPOTRELAY_<SECTION>_<KEY>``, or ``SPOTRELAY_<KEY>`` for top-level keys."""
    parts = [section, key] if section else [key]
    return ENV_PREFIX + "_".join(p.upper() for p in parts)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, tp: Any, value: Any, from_env: bool) -> Any:
    """Convert ``value`` to ``tp``; environment strings get parsed, YAML values checked."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (from_env and value.strip().lower() in ("", "null", "none")):
            if type(None) in args:
                return None
            raise ConfigError(key, "must not be empty", value)
        return _coerce(key, inner[0], value, from_env)
    if origin is list:
        (item,) = args or (str,)
        if from_env:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(key, "expected a list", value)
        return [_coerce(f"{key}[{i}]", item, v, from_env) for i, v in enumerate(value)]
    if origin is dict:
        if from_env:
            import yaml  # lazily: the controller's Lambda package has no PyYAML

            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(key, "expected a mapping", value)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, "expected true or false", value)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(key, "expected an integer", value)
        try:
            return int(str(value).strip()) if isinstance(value, str) else _exact_int(value)
        except (TypeError, ValueError):
            raise ConfigError(key, "expected an integer", value) from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(key, "not a number", value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, "not a number", value) from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(key, "expected a string", value)
        return str(value)
    return value


def _exact_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _check(key: str, f: dataclasses.Field, value: Any, given: Any) -> None:
    """``value`` within the field's bounds; the error names ``key`` with ``given``, as
    the operator wrote it (an environment variable's text, a YAML value)."""
    meta = f.metadata
    shown = "<redacted>" if meta.get("secret") else given
    if value is None:
        return
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(key, f"must be >= {meta['min']}", shown)
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(key, f"must be <= {meta['max']}", shown)
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(key, f"must be one of {', '.join(map(str, meta['choices']))}", shown)


def _build(
    cls: type[T],
    data: Mapping[str, Any],
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
    section: str | None,
) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(section or "<top>", "expected a mapping", data)
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for unknown in sorted(set(data) - names):
        where = f"{section}.{unknown}" if section else str(unknown)
        raise ConfigError(where, "unknown key (check spelling; see --help)")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{section}.{f.name}" if section else f.name
        if _is_section(tp):
            sub_over = overrides.get(f.name, {})
            kwargs[f.name] = _build(tp, data.get(f.name) or {}, env, sub_over, f.name)
            continue
        if f.name in overrides and overrides[f.name] is not None:
            value = given = _coerce(key, tp, overrides[f.name], from_env=False)
        elif env_name(section, f.name) in env:
            given = env[env_name(section, f.name)]
            value = _coerce(env_name(section, f.name), tp, given, True)
            if getattr(cls, "ENV_ONLY", False):  # no YAML key to name: name the variable
                key = env_name(section, f.name)
            else:
                given = value
        elif f.name in data:
            value = given = _coerce(key, tp, data[f.name], from_env=False)
        else:
            continue
        _check(key, f, value, given)
        kwargs[f.name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field with no default and no value
        raise ConfigError(section or "<top>", str(exc)) from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def read_yaml(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The YAML file as a mapping; an absent path means defaults only."""
    if path is None:
        return {}
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError("--config", f"cannot read: {exc.strerror}", str(p)) from None
    import yaml  # lazily: the controller's Lambda package has no PyYAML

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("--config", f"invalid YAML{where}", str(p)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", "top level must be a mapping of sections", str(p))
    return data


def load(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from defaults < YAML file < environment < ``overrides``.

    ``overrides`` is nested like the YAML (``{"server": {"port": 9000}}``);
    ``None`` values in it are ignored so argparse defaults can be passed as-is.
    """
    return _build(cls, read_yaml(path), os.environ if env is None else env, overrides or {}, None)


def describe(cls: type) -> str:
    """Every key with its default and environment variable, for ``--help`` epilogs."""
    lines = ["configuration keys (YAML section.key = default  [environment variable]):"]
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            sub_hints = _hints(tp)
            for sf in dataclasses.fields(tp):
                if _is_section(sub_hints[sf.name]):
                    continue
                lines.append(_describe_line(f.name, sf))
        else:
            lines.append(_describe_line(None, f))
    return "\n".join(lines)


def _describe_line(section: str | None, f: dataclasses.Field) -> str:
    default = (
        f.default
        if f.default is not dataclasses.MISSING
        else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    )
    key = f"{section}.{f.name}" if section else f.name
    shown = "<secret>" if f.metadata.get("secret") and default else default
    text = f"  {key} = {shown!r}  [{env_name(section, f.name)}]"
    if f.metadata.get("help"):
        text += f"\n      {f.metadata['help']}"
    return text


def redacted(obj: Any) -> dict[str, Any]:
    """The config as a dict with secret fields masked: safe to log or print."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = redacted(value)
        elif f.metadata.get("secret") and value:
            out[f.name] = "<redacted>"
        else:
            out[f.name] = value
    return out
