"""The controller's settings, from the Lambda function's environment variables.

No YAML and no third-party parser: the Lambda package carries only this
package and boto3 (in the runtime). A bad value is a one-line error naming
the variable, as everywhere else in spotrelay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .fallback import FallbackPolicy, PolicyError

PREFIX = "SPOTRELAY_"


class SettingError(ValueError):
    """``SPOTRELAY_<KEY> = value: why`` on one line."""


@dataclass(frozen=True)
class ControllerSettings:
    asg_name: str
    pool: str
    router_urls: tuple[str, ...]
    node_token: str | None = None  # tests and the demo; AWS uses node_token_parameter
    node_token_parameter: str | None = None  # SSM SecureString name or ARN
    fallback_enabled: bool = True
    policy: FallbackPolicy = FallbackPolicy()
    drain_on_rebalance: bool = False
    metric_namespace: str = "spotrelay"
    endpoint_url: str | None = None  # AWS API endpoint override (moto in tests)
    router_timeout_s: float = 5.0
    queue_url: str | None = None  # the interruption queue: lifecycle checks go back on it
    lifecycle_check_every_s: int = 10  # SQS DelaySeconds between two checks
    lifecycle_deadline_s: float = 300.0  # complete a silent agent's action by then
    agent_silent_after_s: float = 10.0  # no heartbeat at the routers this long: silent


def _get(env: Mapping[str, str], key: str, default: str | None = None) -> str | None:
    value = env.get(PREFIX + key)
    return default if value is None or value == "" else value


def _number(env: Mapping[str, str], key: str, default: float, minimum: float = 0) -> float:
    raw = _get(env, key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{PREFIX}{key} = {raw!r}: not a number") from None
    if value < minimum:
        raise SettingError(f"{PREFIX}{key} = {raw!r}: must be >= {minimum:g}")
    return value


def _optional_count(env: Mapping[str, str], key: str) -> int | None:
    """A whole number, or None when unset (the setting's documented default applies)."""
    if _get(env, key) is None:
        return None
    value = _number(env, key, 0)
    if value != int(value):
        raise SettingError(f"{PREFIX}{key} = {_get(env, key)!r}: must be a whole number")
    return int(value)


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = _get(env, key)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{PREFIX}{key} = {raw!r}: expected true or false")


def from_env(env: Mapping[str, str]) -> ControllerSettings:
    asg = _get(env, "ASG_NAME")
    if not asg:
        raise SettingError(f"{PREFIX}ASG_NAME: required (the pool's Auto Scaling group)")
    urls = tuple(u.strip() for u in (_get(env, "ROUTER_URLS") or "").split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise SettingError(f"{PREFIX}ROUTER_URLS = {url!r}: each URL needs http(s)://")
    policy = FallbackPolicy(
        fallback_after_s=_number(env, "FALLBACK_AFTER_S", 0),
        recover_after_s=_number(env, "RECOVER_AFTER_S", 1800),
        step_interval_s=_number(env, "STEP_INTERVAL_S", 600),
        min_ready=int(_number(env, "MIN_READY", 0)),
        max_on_demand=_optional_count(env, "MAX_ON_DEMAND"),
        base_on_demand=int(_number(env, "BASE_ON_DEMAND", 0)),
        recover_backoff_max_s=_number(env, "RECOVER_BACKOFF_MAX_S", 14400),
    )
    try:
        policy.validate()
    except PolicyError as exc:
        raise SettingError(f"{PREFIX}{exc.key.upper()}: {exc}") from None
    return ControllerSettings(
        asg_name=asg,
        pool=_get(env, "POOL", asg) or asg,
        router_urls=urls,
        node_token=_get(env, "NODE_TOKEN"),
        node_token_parameter=_get(env, "NODE_TOKEN_PARAMETER"),
        fallback_enabled=_flag(env, "FALLBACK_ENABLED", True),
        policy=policy,
        drain_on_rebalance=_flag(env, "DRAIN_ON_REBALANCE", False),
        metric_namespace=_get(env, "METRIC_NAMESPACE", "spotrelay") or "spotrelay",
        endpoint_url=_get(env, "AWS_ENDPOINT_URL"),
        router_timeout_s=_number(env, "ROUTER_TIMEOUT_S", 5.0, minimum=0.1),
        queue_url=_get(env, "QUEUE_URL"),
        lifecycle_check_every_s=_check_every(env),
        lifecycle_deadline_s=_number(env, "LIFECYCLE_DEADLINE_S", 300, minimum=1),
        agent_silent_after_s=_number(env, "AGENT_SILENT_AFTER_S", 10, minimum=1),
    )


def _check_every(env: Mapping[str, str]) -> int:
    value = _number(env, "LIFECYCLE_CHECK_EVERY_S", 10, minimum=1)
    if value > 900 or value != int(value):
        raise SettingError(
            f"{PREFIX}LIFECYCLE_CHECK_EVERY_S = {_get(env, 'LIFECYCLE_CHECK_EVERY_S')!r}: "
            "must be a whole number of seconds up to 900 (SQS DelaySeconds)"
        )
    return int(value)
