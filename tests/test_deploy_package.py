"""``spotrelay up`` deploys what is in the checkout, and the instances install exactly that.

End to end against a moto server: ``up`` builds the wheel from this checkout,
applies the artifacts step of the provider-free stand-in for
examples/complete, uploads the wheel under its sha256, and the user data
that Terraform renders for routers and GPU nodes names that object and hash.
The rendered ``spotrelay-fetch-package`` is then run as the node would run
it, against the same moto bucket: it hands over the file only when its
sha256 matches. The real artifacts.tf is applied with the real AWS provider
(when the machine image has it) against moto too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from spotrelay.deploy.artifacts import artifact_targets
from tests.support.deploy import (
    AWS_ENV,
    EXAMPLE,
    REGION,
    REPO,
    aws,
    cli,
    fake_wheel,
    minimal,
    stand_in,
    user_data_file,
    write_yaml,
)
from tests.tfshim.shim import install

FETCHER = "/usr/local/sbin/spotrelay-fetch-package"
TF_PLUGINS = Path("/opt/tf-plugins")
AWS_PROVIDER = TF_PLUGINS / "registry.terraform.io" / "hashicorp" / "aws"


def run_fetcher(script: str, tmp_path: Path, moto_url: str, source: str, sha: str):
    """Run the rendered fetcher as a node does (bash, a Python with botocore, the region)."""
    path = tmp_path / "spotrelay-fetch-package"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENV, AWS_ENDPOINT_URL=moto_url, TMPDIR=str(tmp_path))
    argv = ["bash", str(path), sys.executable, source, sha, REGION]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def test_up_builds_uploads_and_the_nodes_install_exactly_that_object(
    tmp_path: Path, moto_url: str
) -> None:
    shim = install(tmp_path / "bin")
    d = stand_in(tmp_path)
    s3 = aws("s3", moto_url)
    s3.create_bucket(Bucket="t1-artifacts")
    deploy = write_yaml(
        tmp_path / "deploy.yaml",
        minimal(
            terraform={"binary": str(shim), "dir": str(d)},
            status={"aws_endpoint_url": moto_url},
            up={"wait": False, "preflight": False},
        ),
    )
    up = cli("up", "--config", str(deploy))
    assert up.returncode == 0, up.stdout + up.stderr
    out = up.stdout
    found = re.search(r"==> upload: s3://t1-artifacts/(spotrelay/([0-9a-f]{64})/(\S+\.whl))", out)
    assert found, out
    key, sha, name = found.groups()
    assert name == "spotrelay-0.1.0-py3-none-any.whl"
    # Built from the checkout, the bucket applied alone first, then uploaded, then the rest.
    steps = [out.index(s) for s in ("==> wheel", "==> artifacts", "==> upload", "==> plan")]
    assert steps == sorted(steps)
    assert "-target=terraform_data.artifacts" in out

    # The object is the wheel, byte for byte: its sha256 is the one in the key.
    obj = s3.get_object(Bucket="t1-artifacts", Key=key)
    body = obj["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha and obj["Metadata"]["sha256"] == sha
    with zipfile.ZipFile(io.BytesIO(body)) as whl:
        assert "spotrelay/deploy/artifacts.py" in whl.namelist()  # this checkout's code
        assert {i.date_time for i in whl.infolist()} == {(1980, 1, 1, 0, 0, 0)}  # reproducible

    # What Terraform rendered: both roles install exactly that object, checked by that hash.
    code, rendered, err = tf_output(shim, d)
    assert code == 0, err
    source = f"s3://t1-artifacts/{key}"
    gpu_install = user_data_file(rendered["gpu_user_data"], "/usr/local/sbin/spotrelay-install")
    assert f"venv_install /opt/spotrelay/venv '{source}' '{sha}'" in gpu_install
    router_install = user_data_file(
        rendered["router_user_data"], "/usr/local/sbin/spotrelay-install"
    )
    assert f"'{source}' '{sha}'" in router_install
    fetcher = user_data_file(rendered["gpu_user_data"], FETCHER)
    assert fetcher == user_data_file(rendered["router_user_data"], FETCHER)

    # The node's fetcher against the bucket: the right object comes back as a file ...
    ok = run_fetcher(fetcher, tmp_path, moto_url, source, sha)
    assert ok.returncode == 0, ok.stderr
    fetched = Path(ok.stdout.strip())
    assert fetched.name == name and hashlib.sha256(fetched.read_bytes()).hexdigest() == sha
    # ... and a replaced object is refused: nothing is printed for pip to install.
    s3.put_object(Bucket="t1-artifacts", Key=key, Body=b"not the wheel")
    bad = run_fetcher(fetcher, tmp_path, moto_url, source, sha)
    assert bad.returncode == 1 and bad.stdout == ""
    assert f"not {sha}: refusing to install it" in bad.stderr


def tf_output(shim: Path, d: Path) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [str(shim), "output", "-json"], cwd=d, capture_output=True, text=True, timeout=120
    )
    values = {k: v["value"] for k, v in json.loads(proc.stdout or "{}").items()}
    return proc.returncode, values, proc.stderr


def test_fetcher_pins_an_index_release_by_hash(tmp_path: Path, moto_url: str) -> None:
    """A requirement is fetched only through pip's hash-checking mode: a wrong hash fails."""
    script = REPO / "terraform/modules/shared/package/fetch-package.sh"
    wheel = fake_wheel(tmp_path)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    url = wheel.as_uri()  # a local wheel URL: no index needed, same pip code path
    ok = run_fetcher(script.read_text(), tmp_path, moto_url, f"spotrelay @ {url}", sha)
    assert ok.returncode == 0, ok.stderr
    assert hashlib.sha256(Path(ok.stdout.strip()).read_bytes()).hexdigest() == sha
    bad = run_fetcher(script.read_text(), tmp_path, moto_url, f"spotrelay @ {url}", "0" * 64)
    assert bad.returncode != 0 and bad.stdout == ""
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in bad.stderr


def test_one_fetcher_for_both_roles() -> None:
    """Both config modules render the one script in modules/shared/package; no copy remains."""
    copies = sorted(p.relative_to(REPO) for p in (REPO / "terraform").rglob("fetch-package.sh"))
    assert copies == [Path("terraform/modules/shared/package/fetch-package.sh")]
    for role in ("gpu-pool", "router"):
        main = (REPO / f"terraform/modules/{role}/modules/config/main.tf").read_text()
        assert 'source = "../../../shared/package"' in main, role


def test_no_default_names_an_index_release() -> None:
    """No variable, example or deploy.yaml default installs spotrelay from an index by name."""
    requirement = re.compile(r'"spotrelay(\[[^\]]*\])?\s*(==|>=|~=|<=|<|>|!=|@)[^"]*"')
    offenders = [
        f"{path.relative_to(REPO)}: {m.group(0)}"
        for path in (REPO / "terraform").rglob("*.tf")
        for line in path.read_text().splitlines()
        if re.search(r"default|optional\(", line)
        for m in [requirement.search(line)]
        if m
    ]
    assert offenders == []
    from spotrelay.deploy.settings import SoftwareSection

    assert SoftwareSection().spotrelay_pip_spec is None


def test_index_package_needs_its_hash(tmp_path: Path) -> None:
    shim = install(tmp_path / "bin")
    doc = minimal(
        terraform={"binary": str(shim), "dir": str(stand_in(tmp_path))},
        software={"spotrelay_pip_spec": "spotrelay==0.1.0"},
    )
    proc = cli("up", "--config", str(write_yaml(tmp_path / "d.yaml", doc)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "spotrelay: config error: software.spotrelay_sha256: required with "
        "software.spotrelay_pip_spec (the sha256 of the file it downloads)"
    ]


def test_artifacts_step_targets_every_resource_of_the_example_file() -> None:
    targets = artifact_targets(EXAMPLE)
    text = (EXAMPLE / "artifacts.tf").read_text()
    assert len(targets) == len(re.findall(r"^resource ", text, re.M)) >= 5
    for kind in ("aws_s3_bucket", "aws_s3_bucket_policy", "aws_s3_bucket_versioning",
                 "aws_s3_bucket_public_access_block",
                 "aws_s3_bucket_server_side_encryption_configuration"):  # fmt: skip
        assert f"-target={kind}.artifacts" in targets


# -- the real artifacts.tf, real AWS provider, moto ---------------------------------------------

PROVIDER_OVERRIDE = """
variable "test_moto" {
  type = string
}

provider "aws" {
  region                      = var.region
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  endpoints {
    s3  = var.test_moto
    sts = var.test_moto
    iam = var.test_moto
  }
}
"""


@pytest.mark.skipif(
    not AWS_PROVIDER.is_dir() or not shutil.which("terraform"),
    reason="needs terraform and the hashicorp/aws provider in /opt/tf-plugins (the CI image)",
)
def test_example_artifacts_bucket_on_moto(tmp_path: Path, moto_url: str) -> None:
    """examples/complete/artifacts.tf applied for real: private, encrypted, versioned, TLS only."""
    from spotrelay.deploy.artifacts import ArtifactError, Wheel, sha256_file, upload
    from spotrelay.deploy.terraform import TerraformDriver

    d = tmp_path / "artifacts"
    d.mkdir()
    shutil.copy(EXAMPLE / "artifacts.tf", d)
    variables = (EXAMPLE / "variables.tf").read_text()
    keep = re.findall(
        r'^variable "(?:name|region|spotrelay_\w+)" \{\n.*?^\}\n', variables, re.M | re.S
    )
    (d / "variables.tf").write_text("\n".join(keep))
    (d / "provider.tf").write_text(PROVIDER_OVERRIDE)
    (tmp_path / "cli.tfrc").write_text(
        "provider_installation {\n  filesystem_mirror {\n"
        f'    path    = "{TF_PLUGINS}"\n    include = ["registry.terraform.io/hashicorp/aws"]\n'
        "  }\n}\n"
    )
    os.environ["TF_CLI_CONFIG_FILE"] = str(tmp_path / "cli.tfrc")
    try:
        driver = TerraformDriver(shutil.which("terraform") or "", d, echo=lambda _: None)
        driver.init()
        wheel = Wheel(fake_wheel(tmp_path), "")
        wheel = Wheel(wheel.path, sha256_file(wheel.path))
        driver.step(
            "artifacts", "apply", "-input=false", "-auto-approve",
            f"-var=test_moto={moto_url}", "-var=region=us-east-1", "-var=name=t1",
            f"-var=spotrelay_wheel={json.dumps(wheel.tfvar())}",
            *artifact_targets(d),
        )  # fmt: skip
        bucket = driver.outputs()["artifacts_bucket"]
    finally:
        del os.environ["TF_CLI_CONFIG_FILE"]
    assert bucket == "t1-art-123456789012-us-east-1"
    s3 = aws("s3", moto_url)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    # moto evaluates the bucket policy: the same upload over plain HTTP is refused.
    with pytest.raises(ArtifactError, match="Forbidden"):
        upload(s3, bucket, wheel, echo=lambda _: None)


def test_up_refuses_a_wheel_that_is_not_one(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("x")
    doc = minimal(terraform={"dir": str(stand_in(tmp_path))})
    proc = cli("up", "--config", str(write_yaml(tmp_path / "d.yaml", doc)), "--wheel", str(other))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"spotrelay up: --wheel {other}: not a spotrelay-*.whl file"
