"""The controller's settings, from the Lambda function's environment variables.

Loaded by :mod:`spotrelay.core.config`, the loader every component uses, from
the flat schema :class:`ControllerEnv` (``SPOTRELAY_<KEY>``; an empty variable
counts as unset, as Terraform passes unset inputs). No YAML: the Lambda package
carries only this package and the few core modules it imports (boto3 comes
with the runtime; ``deploy/controller_zip.py`` lists them). A bad value is a
one-line error naming the variable, as everywhere else in spotrelay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from spotrelay.core.config import ENV_PREFIX, ConfigError, load, setting

from .fallback import FallbackPolicy, PolicyError

PREFIX = ENV_PREFIX
#: The controller's bad-setting error is the loader's (``SPOTRELAY_<KEY> = value: why``).
SettingError = ConfigError


@dataclass(frozen=True)
class ControllerEnv:
    """The environment as the loader reads it: one field per ``SPOTRELAY_<KEY>``."""

    ENV_ONLY: ClassVar[bool] = True  # errors name the variable (there is no YAML key)

    asg_name: str | None = setting(None, help="the pool's Auto Scaling group (required)")
    pool: str | None = setting(None, help="pool name in logs and metrics (default: asg_name)")
    router_urls: list[str] = setting(default_factory=list, help="routers, comma-separated")
    node_token: str | None = setting(None, secret=True, help="tests and the demo")
    node_token_parameter: str | None = setting(None, help="SSM SecureString name or ARN")
    fallback_enabled: bool = setting(True)
    drain_on_rebalance: bool = setting(False)
    metric_namespace: str = setting("spotrelay")
    aws_endpoint_url: str | None = setting(None, help="AWS API endpoint override (moto)")
    router_timeout_s: float = setting(5.0, min=0.1)
    queue_url: str | None = setting(None, help="the interruption queue")
    lifecycle_check_every_s: float = setting(10, min=1)  # and whole, <= 900
    lifecycle_deadline_s: float = setting(300, min=1)
    agent_silent_after_s: float = setting(10, min=1)
    # the fallback policy (validated as a whole by FallbackPolicy.validate)
    fallback_after_s: float = setting(0, min=0)
    recover_after_s: float = setting(1800, min=0)
    step_interval_s: float = setting(600, min=0)
    min_ready: float = setting(0, min=0)
    max_on_demand: float | None = setting(None, min=0)
    base_on_demand: float = setting(0, min=0)
    recover_backoff_max_s: float = setting(14400, min=0)


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


def from_env(env: Mapping[str, str]) -> ControllerSettings:
    raw = {k: v for k, v in env.items() if k.startswith(PREFIX) and v != ""}
    e = load(ControllerEnv, env=raw)
    if not e.asg_name:
        raise SettingError(f"{PREFIX}ASG_NAME", "required (the pool's Auto Scaling group)")
    for url in e.router_urls:
        if not url.startswith(("http://", "https://")):
            raise SettingError(f"{PREFIX}ROUTER_URLS", "each URL needs http(s)://", url)
    for key, most in (("max_on_demand", None), ("lifecycle_check_every_s", 900)):
        value = getattr(e, key)
        if value is not None and (value != int(value) or (most and value > most)):
            name = f"{PREFIX}{key.upper()}"
            raise SettingError(name, _WHOLE[key], raw[name])
    policy = FallbackPolicy(
        fallback_after_s=e.fallback_after_s,
        recover_after_s=e.recover_after_s,
        step_interval_s=e.step_interval_s,
        min_ready=int(e.min_ready),
        max_on_demand=None if e.max_on_demand is None else int(e.max_on_demand),
        base_on_demand=int(e.base_on_demand),
        recover_backoff_max_s=e.recover_backoff_max_s,
    )
    try:
        policy.validate()
    except PolicyError as exc:
        raise SettingError(f"{PREFIX}{exc.key.upper()}", str(exc)) from None
    return ControllerSettings(
        asg_name=e.asg_name,
        pool=e.pool or e.asg_name,
        router_urls=tuple(e.router_urls),
        node_token=e.node_token,
        node_token_parameter=e.node_token_parameter,
        fallback_enabled=e.fallback_enabled,
        policy=policy,
        drain_on_rebalance=e.drain_on_rebalance,
        metric_namespace=e.metric_namespace,
        endpoint_url=e.aws_endpoint_url,
        router_timeout_s=e.router_timeout_s,
        queue_url=e.queue_url,
        lifecycle_check_every_s=int(e.lifecycle_check_every_s),
        lifecycle_deadline_s=e.lifecycle_deadline_s,
        agent_silent_after_s=e.agent_silent_after_s,
    )


_WHOLE = {
    "max_on_demand": "must be a whole number",
    "lifecycle_check_every_s": "must be a whole number of seconds up to 900 (SQS DelaySeconds)",
}
