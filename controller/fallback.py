"""On-demand fallback: when spot runs dry, raise the group's on-demand base step by step.

The decision is a pure function of what was observed (the group's on-demand
base, its recent launch attempts, the routers' ready-node count) and a small
persisted state (when the shortage of ready nodes began, when the base last
changed, the pending recovery probe and how many failed in a row), evaluated
at the injected clock's ``now``. It never increments: it computes an absolute
target from the *observed* base, so two runs that see the same group decide
the same value, and the writer applies it only if the group still shows the
value it observed (:meth:`spotrelay.controller.aws.AsgGateway.apply`).

Recovery cannot wait for a spot *success* while every node is on-demand: the
group makes no spot attempt then. So "spot is back" means no spot launch has
failed for ``recover_after_s``; lowering the base by one is itself the probe
(the group replaces one on-demand node with spot, capacity rebalance and the
drain retire the old one), and a new failure raises it again.

A probe costs no serving capacity: the group launches the spot replacement
before it retires the on-demand node, so while spot is still short the
replacement fails and the on-demand node keeps serving. What it costs is a few
failed launch activities and two base changes. Still, during a long shortage
each failed probe doubles the quiet time the next one waits for (capped at
``recover_backoff_max_s``); a probe that meets no shortage resets it.

The configured base (``base_on_demand``, the module's
``scaling.on_demand_base_capacity``) is a floor: never lowered below, and a
group found below it (the operator raised the variable; Terraform leaves an
existing group's base to the controller) is raised to it at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from .activities import LaunchAttempt


class Action(StrEnum):
    RAISE = "raise"
    LOWER = "lower"
    HOLD = "hold"


class PolicyError(ValueError):
    """A policy that cannot work; ``key`` names the setting to fix."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class FallbackPolicy:
    """Thresholds; the gpu-pool module's ``on_demand_fallback`` variable maps onto these."""

    fallback_after_s: float = 300.0  # spot failing (or ready < min_ready) this long: raise
    recover_after_s: float = 1800.0  # no spot failure this long: lower
    step_interval_s: float = 600.0  # at least this long between two changes (cold start)
    min_ready: int = 0  # 0 = the ready-node count never triggers a fallback
    max_on_demand: int = 2
    base_on_demand: int = 0  # the configured base: never lowered below it, raised to it
    recover_backoff_max_s: float = 14400.0  # cap of the doubled wait after failed probes

    def validate(self) -> None:
        if self.max_on_demand < self.base_on_demand:
            raise PolicyError("max_on_demand", "must be >= the configured on-demand base")
        if self.recover_backoff_max_s < self.recover_after_s:
            raise PolicyError("recover_backoff_max_s", "must be >= recover_after_s")

    def recover_wait(self, failed_probes: int) -> float:
        """Quiet time before the next probe: recover_after_s, doubled per failed probe, capped."""
        doubled = self.recover_after_s * 2.0 ** min(failed_probes, 32)
        return min(doubled, max(self.recover_backoff_max_s, self.recover_after_s))


@dataclass(frozen=True)
class FallbackState:
    """What one run leaves for the next (kept as tags on the group)."""

    short_since: float | None = None  # ready < min_ready since (epoch s)
    changed_at: float | None = None  # the controller last changed the base (epoch s)
    probe_at: float | None = None  # a probe (lowered base) whose outcome is not seen yet
    failed_probes: int = 0  # consecutive probes that spot answered with a shortage


@dataclass(frozen=True)
class Observation:
    on_demand_base: int
    attempts: Sequence[LaunchAttempt]  # recent launch attempts, any order
    ready_nodes: int | None  # None: no router answered (never a reason to act)


@dataclass(frozen=True)
class Decision:
    action: Action
    observed_base: int
    target_base: int
    reason: str
    state: FallbackState

    @property
    def changes(self) -> bool:
        return self.target_base != self.observed_base


def failing_since(attempts: Sequence[LaunchAttempt]) -> float | None:
    """Start of the current run of spot-shortage failures (no success after it), or None."""
    since = None
    for attempt in sorted(attempts, key=lambda a: a.at):
        if attempt.ok:
            since = None
        elif attempt.spot_shortage and since is None:
            since = attempt.at
    return since


def last_shortage(attempts: Sequence[LaunchAttempt]) -> LaunchAttempt | None:
    failures = [a for a in attempts if a.spot_shortage]
    return max(failures, key=lambda a: a.at) if failures else None


def settle_probe(
    attempts: Sequence[LaunchAttempt], state: FallbackState, now: float, window_s: float
) -> FallbackState:
    """The pending probe's outcome, once the group's launch attempts show it.

    A spot shortage at or after the probe: it failed, and the next one waits
    twice as long. No shortage since, and a successful launch or ``window_s``
    gone by (the group may have needed no launch): spot works again, the
    backoff resets. Otherwise still pending. The count written is the count
    read plus one, never a blind increment, so two runs that read the same
    state write the same one.
    """
    if state.probe_at is None:
        return state
    since = [a for a in attempts if a.at >= state.probe_at]
    if any(a.spot_shortage for a in since):
        return replace(state, probe_at=None, failed_probes=state.failed_probes + 1)
    if any(a.ok for a in since) or now - state.probe_at >= window_s:
        return replace(state, probe_at=None, failed_probes=0)
    return state


def why_hold(short: bool, quiet_for: float | None, wait: float, failed_probes: int) -> str:
    """The reason a run in fallback does not lower: what the operator reads in the log."""
    if short:
        return "ready < min_ready"
    why = f"last spot failure {quiet_for:.0f}s ago; next probe after {wait:.0f}s without one"
    return why + (f" ({failed_probes} failed probes)" if failed_probes else "")


class FallbackDecider:
    """Decides one step at a time; ``clock`` returns epoch seconds (injected for tests)."""

    def __init__(self, policy: FallbackPolicy, clock: Callable[[], float] = time.time) -> None:
        policy.validate()
        self.policy = policy
        self.clock = clock

    def decide(self, obs: Observation, state: FallbackState) -> Decision:
        p, now, base = self.policy, self.clock(), obs.on_demand_base
        short = obs.ready_nodes is not None and obs.ready_nodes < p.min_ready
        state = replace(state, short_since=(state.short_since or now) if short else None)
        state = settle_probe(obs.attempts, state, now, p.step_interval_s)

        def done(action: Action, target: int, reason: str) -> Decision:
            changed = state.changed_at if target == base else now
            return Decision(action, base, target, reason, replace(state, changed_at=changed))

        if base < p.base_on_demand:  # the operator raised the configured base: follow at once
            target = p.base_on_demand
            return done(Action.RAISE, target, f"on-demand base {base} -> {target} (configured)")
        trigger = self._trigger(obs, state, now)
        settled = state.changed_at is None or now - state.changed_at >= p.step_interval_s
        if trigger:
            if base >= p.max_on_demand:
                return done(Action.HOLD, base, f"{trigger}; already at max_on_demand={base}")
            if not settled:
                wait = p.step_interval_s - (now - (state.changed_at or now))
                return done(Action.HOLD, base, f"{trigger}; next step in {wait:.0f}s")
            return done(Action.RAISE, base + 1, f"{trigger}; on-demand base {base} -> {base + 1}")
        if base <= p.base_on_demand:
            return done(Action.HOLD, base, "spot healthy; on-demand base at its configured value")
        last = last_shortage(obs.attempts)
        quiet_for = now - last.at if last else None
        wait = p.recover_wait(state.failed_probes)
        if short or (quiet_for is not None and quiet_for < wait):
            why = why_hold(short, quiet_for, wait, state.failed_probes)
            return done(Action.HOLD, base, f"in fallback: {why}")
        if not settled:
            return done(Action.HOLD, base, "spot recovered; waiting step_interval_s to lower")
        quiet = "no spot failure seen" if last is None else f"no spot failure for {quiet_for:.0f}s"
        state = replace(state, probe_at=now)
        return done(Action.LOWER, base - 1, f"{quiet}; on-demand base {base} -> {base - 1} (probe)")

    def _trigger(self, obs: Observation, state: FallbackState, now: float) -> str | None:
        """Why capacity must move to on-demand now, or None."""
        p = self.policy
        since, last = failing_since(obs.attempts), last_shortage(obs.attempts)
        # Still failing: the last failure is recent and came after our last step
        # (a failure before it is what that step already answered).
        fresh = (
            last is not None
            and now - last.at < p.recover_after_s
            and (state.changed_at is None or last.at >= state.changed_at)
        )
        if since is not None and fresh and now - since >= p.fallback_after_s:
            detail = f" ({last.message})" if last and last.message else ""
            return f"spot launches failing for {now - since:.0f}s{detail}"
        if state.short_since is not None and now - state.short_since >= p.fallback_after_s:
            return (
                f"ready nodes {obs.ready_nodes} < min_ready {p.min_ready} "
                f"for {now - state.short_since:.0f}s"
            )
        return None
