"""The controller's AWS I/O: the group's on-demand base, its activities, tags and metrics.

Safe to run twice at once: :meth:`AsgGateway.apply` re-reads the group and
writes the decided base and state only if the group still shows the base and
state tags the decision was made from (a concurrent run that already moved
them wins; the loser logs and does nothing). Both are absolute, so two runs
that saw the same group write the same values: a failed probe is counted
once. The schedule, the queue and a local run can overlap; this check is what
makes that safe.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from .activities import launch_attempts
from .fallback import Decision, FallbackState, Observation

log = logging.getLogger("spotrelay.controller")

TAG_SHORT_SINCE = "spotrelay:fallback-short-since"
TAG_CHANGED_AT = "spotrelay:fallback-changed-at"
TAG_PROBE_AT = "spotrelay:fallback-probe-at"
TAG_FAILED_PROBES = "spotrelay:fallback-failed-probes"
ACTIVITY_PAGES = 2  # 2 x 100 activities: hours of history, enough for any threshold
# Group members that serve or are about to: Pending, Pending:Wait, Pending:Proceed,
# InService. Terminating*, Detaching, Standby and warm-pool states do not.
LIVE_STATES = ("Pending", "InService")
EC2_LIVE = frozenset({"pending", "running"})


class GroupNotFound(RuntimeError):
    pass


def _float_tag(tags: dict[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


class AsgGateway:
    def __init__(self, autoscaling: Any, asg_name: str, ec2: Any = None) -> None:
        self.client = autoscaling
        self.asg_name = asg_name
        self.ec2 = ec2

    def _group(self) -> dict[str, Any]:
        groups = self.client.describe_auto_scaling_groups(AutoScalingGroupNames=[self.asg_name])
        if not groups.get("AutoScalingGroups"):
            raise GroupNotFound(f"Auto Scaling group {self.asg_name!r} not found")
        return groups["AutoScalingGroups"][0]

    @staticmethod
    def _base(group: dict[str, Any]) -> int:
        dist = (group.get("MixedInstancesPolicy") or {}).get("InstancesDistribution") or {}
        return int(dist.get("OnDemandBaseCapacity") or 0)

    def activities(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"AutoScalingGroupName": self.asg_name, "MaxRecords": 100}
        for _ in range(ACTIVITY_PAGES):
            page = self.client.describe_scaling_activities(**kwargs)
            out.extend(page.get("Activities", []))
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
        return out

    @staticmethod
    def _state(group: dict[str, Any]) -> FallbackState:
        """The state the last run left in the group's tags (a missing tag: its default)."""
        tags = {t["Key"]: t.get("Value", "") for t in group.get("Tags", [])}
        return FallbackState(
            short_since=_float_tag(tags, TAG_SHORT_SINCE),
            changed_at=_float_tag(tags, TAG_CHANGED_AT),
            probe_at=_float_tag(tags, TAG_PROBE_AT),
            failed_probes=int(_float_tag(tags, TAG_FAILED_PROBES) or 0),
        )

    def spot_live(self, group: dict[str, Any]) -> int:
        """Spot instances of the group that are pending or in service.

        The group's instance list does not say which market an instance runs
        in; EC2's ``InstanceLifecycle`` does (``spot``; absent for on-demand).
        """
        ids = [
            i["InstanceId"]
            for i in group.get("Instances", [])
            if str(i.get("LifecycleState", "")).startswith(LIVE_STATES)
        ]
        if not ids or self.ec2 is None:
            return 0
        count = 0
        for start in range(0, len(ids), 100):
            # A filter, not InstanceIds: an instance terminated since the group
            # listed it is left out instead of failing the call (NotFound).
            chunk = ids[start : start + 100]
            pages = self.ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-id", "Values": chunk}]
            )
            for page in pages:
                for reservation in page.get("Reservations", []):
                    count += sum(
                        1
                        for inst in reservation.get("Instances", [])
                        if inst.get("InstanceLifecycle") == "spot"
                        and (inst.get("State") or {}).get("Name") in EC2_LIVE
                    )
        return count

    def observe(self, ready_nodes: int | None) -> tuple[Observation, FallbackState]:
        group = self._group()
        obs = Observation(
            self._base(group),
            launch_attempts(self.activities()),
            ready_nodes,
            desired=int(group.get("DesiredCapacity") or 0),
            spot_live=self.spot_live(group),
        )
        return obs, self._state(group)

    def apply(self, decision: Decision, previous: FallbackState) -> bool:
        """Write the decision; False when another run changed the base or the state first."""
        if not decision.changes and decision.state == previous:
            return True
        group = self._group()
        current, stored = self._base(group), self._state(group)
        if current != decision.observed_base or stored != previous:
            log.info(
                "the group shows base %d and %s, not the %d and %s this decision saw: "
                "another run moved it",
                current,
                stored,
                decision.observed_base,
                previous,
            )
            return False
        if decision.changes:
            self.client.update_auto_scaling_group(
                AutoScalingGroupName=self.asg_name,
                MixedInstancesPolicy=with_base(group, decision.target_base),
            )
        if decision.state != previous:
            self._save_state(decision.state)
        return True

    def _save_state(self, state: FallbackState) -> None:
        def tag(key: str, value: float | None, fmt: str = ".3f") -> dict[str, Any]:
            return {
                "ResourceId": self.asg_name,
                "ResourceType": "auto-scaling-group",
                "Key": key,
                "Value": "" if value is None else format(value, fmt),
                "PropagateAtLaunch": False,
            }

        self.client.create_or_update_tags(
            Tags=[
                tag(TAG_SHORT_SINCE, state.short_since),
                tag(TAG_CHANGED_AT, state.changed_at),
                tag(TAG_PROBE_AT, state.probe_at),
                tag(TAG_FAILED_PROBES, state.failed_probes, "d"),
            ]
        )


def with_base(group: dict[str, Any], base: int) -> dict[str, Any]:
    """The update: the group's instances distribution as read, with only the base changed.

    No ``LaunchTemplate``: properties left out of ``UpdateAutoScalingGroup`` are
    not changed, and an update that names a launch template would need
    ``ec2:RunInstances`` and ``iam:PassRole`` on top, which a controller that
    only moves the on-demand base must not hold.
    """
    dist = copy.deepcopy(
        (group.get("MixedInstancesPolicy") or {}).get("InstancesDistribution") or {}
    )
    dist["OnDemandBaseCapacity"] = base
    return {"InstancesDistribution": dist}


def put_metrics(cloudwatch: Any, namespace: str, pool: str, data: list[tuple[str, float, dict]]):
    """One ``PutMetricData`` for a run: (name, value, extra dimensions) triples."""
    if not data:
        return
    cloudwatch.put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": [{"Name": "Pool", "Value": pool}]
                + [{"Name": k, "Value": str(v)} for k, v in dims.items()],
                "Value": float(value),
                "Unit": "Count",
            }
            for name, value, dims in data
        ],
    )
