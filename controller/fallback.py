"""On-demand fallback: when spot runs dry, every missing spot node comes back on-demand at once.

The decision is a pure function of what was observed (the group's on-demand
base, desired capacity and live spot instances, its recent launch attempts,
the routers' ready-node count) and a small persisted state (when the
shortage of ready nodes began, when the base last changed, the pending
recovery probe and how many failed in a row), evaluated at the injected
clock's ``now``. It never increments blindly: in a spot shortage the target
is ``desired - live spot instances`` (every node spot is not serving, the
missing ones included), computed from the *observed* group, so two runs that
see the same group decide the same value, a run while the on-demand nodes
still boot decides the same value again, and the writer applies it only if
the group still shows the value it observed
(:meth:`spotrelay.controller.aws.AsgGateway.apply`). That target never
exceeds ``max_on_demand`` (default: the group's desired capacity) and never
asks the group to swap a running spot node for on-demand.

Recovery cannot wait for a spot *success* while every node is on-demand: the
group makes no spot attempt then. So "spot is back" means no spot launch has
failed for ``recover_after_s``; lowering the base by one is itself the probe
(the group replaces one on-demand node with spot, capacity rebalance and the
drain retire the old one), and a new failure raises it again. Further steps
down follow one per ``step_interval_s``: a return to spot is not urgent, a
second drought during it is cheap to meet one node at a time.

A probe costs no serving capacity: the group launches the spot replacement
before it retires the on-demand node, so while spot is still short the
replacement fails and the on-demand node keeps serving. What it costs is a few
failed launch activities and two base changes. Still, during a long shortage
each failed probe doubles the quiet time the next one waits for (capped at
``recover_backoff_max_s``); a probe that meets no shortage resets it.

``min_ready`` (off by default) is a second, slower trigger for nodes that are
there but not serving: ready nodes below it for ``fallback_after_s`` raise the
base by one per ``step_interval_s`` (a node it asks for takes a cold start to
count as ready, so each step waits for the last).

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

    fallback_after_s: float = 0.0  # spot failing (or ready < min_ready) this long: raise
    recover_after_s: float = 1800.0  # no spot failure this long: lower
    step_interval_s: float = 600.0  # between two steps down (and two min_ready steps up)
    min_ready: int = 0  # 0 = the ready-node count never triggers a fallback
    max_on_demand: int | None = None  # None: the group's desired capacity
    base_on_demand: int = 0  # the configured base: never lowered below it, raised to it
    recover_backoff_max_s: float = 14400.0  # cap of the doubled wait after failed probes

    def validate(self) -> None:
        if self.max_on_demand is not None and self.max_on_demand < self.base_on_demand:
            raise PolicyError("max_on_demand", "must be >= the configured on-demand base")
        if self.recover_backoff_max_s < self.recover_after_s:
            raise PolicyError("recover_backoff_max_s", "must be >= recover_after_s")

    def cap(self, desired: int) -> int:
        """The most on-demand nodes the fallback asks for (never below the configured base)."""
        limit = desired if self.max_on_demand is None else self.max_on_demand
        return max(limit, self.base_on_demand)

    def recover_wait(self, failed_probes: int) -> float:
        """Quiet time before the next probe: recover_after_s, doubled per failed probe, capped."""
        doubled = self.recover_after_s * 2 ** min(failed_probes, 32)
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
    desired: int = 0  # the group's desired capacity
    spot_live: int = 0  # spot instances pending or in service (not leaving)

    @property
    def not_on_spot(self) -> int:
        """Nodes spot does not serve: the on-demand ones and the missing ones."""
        return max(0, self.desired - self.spot_live)


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


class Trigger(StrEnum):
    SPOT_SHORTAGE = "spot_shortage"  # fill every node spot does not serve, at once
    NOT_READY = "not_ready"  # ready < min_ready: one more node per step_interval_s


class FallbackDecider:
    """Decides one run; ``clock`` returns epoch seconds (injected for tests)."""

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
        settled = state.changed_at is None or now - state.changed_at >= p.step_interval_s
        fired = self._trigger(obs, state, now)
        if fired:
            target, why = self._raise_to(obs, state, now, *fired)
            return done(Action.RAISE if target > base else Action.HOLD, target, why)
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

    def _raise_to(
        self, obs: Observation, state: FallbackState, now: float, kind: Trigger, why: str
    ) -> tuple[int, str]:
        """The base a fired trigger asks for (the observed one: hold), and why."""
        p, base = self.policy, obs.on_demand_base
        cap = p.cap(obs.desired)
        if kind is Trigger.SPOT_SHORTAGE:
            if obs.not_on_spot <= base:
                return base, f"{why}; every node spot does not serve is on-demand already"
            target = min(cap, obs.not_on_spot)
            why += f"; {obs.not_on_spot - base} node(s) missing on spot"
        else:
            target = min(cap, base + 1)
            settled = state.changed_at is None or now - state.changed_at >= p.step_interval_s
            if target > base and not settled:
                wait = p.step_interval_s - (now - (state.changed_at or now))
                return base, f"{why}; next step in {wait:.0f}s"
        if target <= base:
            return base, f"{why}; already at max_on_demand={cap}"
        short_of = kind is Trigger.SPOT_SHORTAGE and target < obs.not_on_spot
        capped = f" (max_on_demand={cap})" if short_of else ""
        return target, f"{why}; on-demand base {base} -> {target}{capped}"

    def _trigger(
        self, obs: Observation, state: FallbackState, now: float
    ) -> tuple[Trigger, str] | None:
        """Why capacity must move to on-demand now, or None."""
        p = self.policy
        since, last = failing_since(obs.attempts), last_shortage(obs.attempts)
        # Still failing: the last failure is recent and came after our last change
        # (a failure before it is what that change already answered).
        fresh = (
            last is not None
            and now - last.at < p.recover_after_s
            and (state.changed_at is None or last.at >= state.changed_at)
        )
        if since is not None and fresh and now - since >= p.fallback_after_s:
            detail = f" ({last.message})" if last and last.message else ""
            return Trigger.SPOT_SHORTAGE, f"spot launches failing for {now - since:.0f}s{detail}"
        if state.short_since is not None and now - state.short_since >= p.fallback_after_s:
            return Trigger.NOT_READY, (
                f"ready nodes {obs.ready_nodes} < min_ready {p.min_ready} "
                f"for {now - state.short_since:.0f}s"
            )
        return None
