"""``spotrelay preflight`` and the preflight ``spotrelay up`` runs before applying.

Real processes against real endpoints: EC2 (subnets, instance types and
their offerings) and IAM (service-linked roles) from a moto server; Service
Quotas' EC2 quotas and Lambda's GetAccountSettings, which moto does not
serve, from tests/support/aws_recorded.py, a loopback server answering with the
response shapes of AWS's API references. boto3 finds each through
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``. The pool's maximum
and the model fit come from the gpu-pool config module itself, evaluated by
the embedded Terraform.
"""

from __future__ import annotations

import re
from pathlib import Path

from spotrelay.deploy.pool_plan import PoolPlan
from spotrelay.deploy.preflight import FAIL, OK, WARN, check_lambda, check_model_fit
from tests.support.aws_recorded import Account, recorded_aws
from tests.support.deploy import REGION, aws, cli, fake_wheel, minimal, stand_in, write_yaml
from tests.tfshim.shim import install


def subnets(moto_url: str) -> list[str]:
    """Two subnets of moto's default VPC: us-east-1a, and us-east-1f (no g6e offered there)."""
    ec2 = aws("ec2", moto_url)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    return [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"{REGION}{az}")[
            "Subnet"
        ]["SubnetId"]
        for i, az in enumerate("af")
    ]


def deployment(tmp_path: Path, moto_url: str, **pool: object) -> dict:
    shim = install(tmp_path / "bin")
    doc = minimal(
        terraform={"binary": str(shim), "dir": str(stand_in(tmp_path))},
        pool={"desired_capacity": 2, **pool},
        variables={"on_demand_fallback": {"enabled": True, "max_on_demand": 2}},
    )
    doc["deployment"]["private_subnet_ids"] = subnets(moto_url)
    doc["model"]["params_billion"] = 7.6
    return doc


def endpoints(moto_url: str, recorded: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ENDPOINT_URL_SERVICE_QUOTAS": recorded,
        "AWS_ENDPOINT_URL_LAMBDA": recorded,
    }


def test_preflight_reports_each_check(tmp_path: Path, moto_url: str) -> None:
    iam = aws("iam", moto_url)
    iam.create_service_linked_role(AWSServiceName="autoscaling.amazonaws.com")
    iam.create_service_linked_role(AWSServiceName="spot.amazonaws.com")
    account = Account(
        applied={"L-3819A6DF": 64},  # spot G and VT: applied value
        defaults={"L-DB2E81BA": 64},  # on-demand: none applied, AWS's default answers
        concurrent_executions=10,
        unreserved=10,  # a new account's Lambda limit
    )
    path = write_yaml(tmp_path / "d.yaml", deployment(tmp_path, moto_url))
    with recorded_aws(account) as recorded:
        proc = cli("preflight", "--config", str(path), env=endpoints(moto_url, recorded))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {m.group(2): (m.group(1), m.group(3)) for m in re.finditer(
        r"^  (OK|WARN|FAIL) +(.+?): (.*)$", proc.stdout, re.M)}  # fmt: skip
    spot = lines['spot quota "All G and VT Spot Instance Requests" (L-3819A6DF)']
    # max_size is the module's desired + 1 = 3; the largest default type is a 2xlarge (8 vCPUs).
    assert spot == (OK, "64 vCPUs, pool needs 24 (max_size 3 x 8 vCPUs)")
    on_demand = lines['on-demand quota "Running On-Demand G and VT instances" (L-DB2E81BA)']
    assert on_demand == (
        OK,
        "64 vCPUs, pool needs 16 (2 on-demand nodes with the fallback x 8 vCPUs)",
    )
    offered = lines["instance types offered in the subnets' AZs"]
    assert offered[0] == WARN and "g6e.xlarge in us-east-1f" in offered[1]
    assert lines["model fits the instance types"] == (OK, "needs 17.0 GiB; every type holds it")
    lam = lines["Lambda concurrency for the controller"]
    assert lam == (OK, "10 unreserved of 10; none reserved for the controller")
    assert lines["service-linked role AWSServiceRoleForAutoScaling"] == (OK, "exists")
    elasticache = lines["service-linked role AWSServiceRoleForElastiCache"]
    assert elasticache[0] == WARN and "elasticache.amazonaws.com" in elasticache[1]
    assert "GetAWSDefaultServiceQuota" in account.requests  # the fallback to AWS's default


def test_up_stops_on_a_quota_below_the_pool_maximum(tmp_path: Path, moto_url: str) -> None:
    account = Account(applied={"L-3819A6DF": 16, "L-DB2E81BA": 64}, unreserved=900)
    doc = deployment(tmp_path, moto_url)
    path = write_yaml(tmp_path / "d.yaml", doc)
    wheel = fake_wheel(tmp_path)
    with recorded_aws(account) as recorded:
        env = endpoints(moto_url, recorded)
        proc = cli("up", "--config", str(path), "--wheel", str(wheel), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        'preflight: FAIL spot quota "All G and VT Spot Instance Requests" (L-3819A6DF): '
        "16 vCPUs, pool needs 24 (max_size 3 x 8 vCPUs): ask for an increase",
        "spotrelay up: preflight failed; nothing applied",
    ]
    assert "==> init" not in proc.stdout and "==> apply" not in proc.stdout
    assert not (Path(doc["terraform"]["dir"]) / "terraform.tfstate").exists()


def test_model_fit_names_the_types_too_small() -> None:
    plan = PoolPlan(REGION, ["g6.xlarge", "g6e.xlarge", "x9.huge"], [], 0, 1, 2, 0, 0)
    plan.need_gib, plan.usable_gib = 30.0, {"g6.xlarge": 21.6, "g6e.xlarge": 43.2}
    (check,) = check_model_fit(plan)
    assert (check.status, check.reason) == (FAIL, "needs 30.0 GiB; too small: g6.xlarge (21.6 GiB)")
    plan.usable_gib.pop("g6.xlarge")
    plan.instance_types.remove("g6.xlarge")
    (check,) = check_model_fit(plan)
    assert check.status == WARN and "x9.huge" in check.reason
    plan.need_gib = None
    assert check_model_fit(plan)[0].status == WARN
    plan.instance_types = ["g6e.xlarge"]
    plan.need_gib = 30.0
    assert check_model_fit(plan)[0].status == OK


def test_reserved_concurrency_must_leave_lambdas_minimum() -> None:
    """A new account (10 in all) cannot reserve 3 for the controller: Lambda keeps 100."""
    import boto3

    plan = PoolPlan(REGION, [], [], 0, 1, 2, 0, 0, fallback={"enabled": True})
    with recorded_aws(Account(concurrent_executions=10, unreserved=10)) as recorded:
        lam = boto3.client("lambda", region_name=REGION, endpoint_url=recorded,
                           aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
        assert check_lambda(plan, lambda _: lam)[0].status == OK
        plan.controller = {"reserved_concurrency": 3}
        (check,) = check_lambda(plan, lambda _: lam)
    assert check.status == FAIL
    assert "reserved_concurrency 3 would leave 7; Lambda keeps 100 unreserved" in check.reason


def test_the_example_fallback_counts_when_the_tfvars_leave_it_out() -> None:
    """examples/complete turns the fallback on by default: preflight counts it then too."""
    from spotrelay.deploy.pool_plan import default_on
    from tests.support.deploy import EXAMPLE

    assert default_on(EXAMPLE, "on_demand_fallback") == {"enabled": True}
    assert default_on(EXAMPLE, "interruption_queue") == {}
