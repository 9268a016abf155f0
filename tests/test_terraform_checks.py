"""The Terraform checks themselves: they catch what they claim to catch.

`make tf-validate` runs ``terraform validate`` and every ``terraform test``
file with the real binary and the machine's AWS provider (tests/tfshim/tfreal.py);
`make tf-check` runs checkov and the user-data size check. These tests show
that a wrong attribute, an unparsable file or oversized user data fails them,
and that what only the 5.x compatibility step checks is listed in the docs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spotrelay.deploy import controller_zip
from tests.tfshim import tfcheck, tfreal

REPO = tfcheck.REPO
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"


@pytest.fixture(scope="module")
def real() -> tfreal.RealTerraform:
    found = tfreal.find()
    if isinstance(found, str):
        pytest.skip(f"SKIP real terraform checks: {found}")
    return found


def test_a_wrong_attribute_name_fails_validate(real: tfreal.RealTerraform, tmp_path: Path) -> None:
    tree = tfcheck.copy_tree(tmp_path)
    if real.needs_compat:
        assert tfreal.apply_compat(tree, real.aws_version) == []
    config = tfreal.cli_config(real, tmp_path)
    assert tfreal.validate(real, tree, "modules/gpu-pool", config) == []  # the control

    main = tree / "modules/gpu-pool/main.tf"
    text = main.read_text()
    anchor = 'resource "aws_autoscaling_group" "node" {\n'
    assert anchor in text
    main.write_text(text.replace(anchor, anchor + "  capacity_rebalance_typo = true\n"))
    problems = tfreal.validate(real, tree, "modules/gpu-pool", config)
    assert len(problems) == 1
    assert "Unsupported argument" in problems[0] and "capacity_rebalance_typo" in problems[0]


def test_every_terraform_test_file_is_run() -> None:
    files = sorted(tfcheck.TF_ROOT.rglob("tests/*.tftest.hcl"))
    names = tfreal.check_names()
    for f in files:
        rel = f.parent.parent.relative_to(tfcheck.TF_ROOT)
        assert f"terraform test: terraform/{rel}" in names, f


def test_compat_lines_are_listed_in_the_docs() -> None:
    """docs/deploy.md names exactly what only the compatibility step checks."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    for c in tfreal.COMPAT:
        assert f"`{c.line}`" in doc and f"terraform/{c.path}" in doc, c
        assert sum(" ".join(ln.split()) == c.line for ln in (tfcheck.TF_ROOT / c.path).open()) == 1
    for rel in tfreal.SIX_ONLY_TESTS:
        assert f"terraform/{rel}" in doc and (tfcheck.TF_ROOT / rel).is_file()


def test_a_stale_compat_entry_fails_the_step(tmp_path: Path) -> None:
    tree = tfcheck.copy_tree(tmp_path)
    target = tree / tfreal.COMPAT[0].path
    target.write_text(target.read_text().replace("auth_token_wo ", "auth_token_wo_renamed "))
    problems = tfreal.apply_compat(tree, "5.100.0")
    assert len(problems) == 1 and "expected exactly one line" in problems[0]


def test_user_data_fits_16_kb_with_every_option_on(tmp_path: Path) -> None:
    sizes = tfcheck.user_data_sizes(tfcheck.copy_tree(tmp_path), tmp_path / "render")
    assert set(sizes) == {"gpu_user_data", "router_user_data"}
    assert tfcheck.user_data_problems(sizes) == []
    cap = tfcheck.USER_DATA_LIMIT - tfcheck.USER_DATA_HEADROOM
    assert all(0 < size <= cap for size in sizes.values()), sizes


def test_the_size_check_is_not_vacuous() -> None:
    over = tfcheck.USER_DATA_LIMIT - tfcheck.USER_DATA_HEADROOM + 1
    assert tfcheck.user_data_problems({"gpu_user_data": over})


def test_checkov_parse_errors_fail_the_check(tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.skip(f"SKIP checkov check: {CHECKOV} missing (make tf-check installs it)")
    # The expression that checkov's HCL parser once rejected in
    # gpu-pool/modules/config/instance_selection.tf, while exiting 0.
    (tmp_path / "main.tf").write_text(
        'variable "b" {\n  type = number\n}\n\nlocals {\n  gib = var.b * 1e9 * 2 / 1073741824\n}\n'
    )
    problems = tfcheck.checkov_problems(str(CHECKOV), tmp_path)
    assert any("could not parse" in p and "main.tf" in p for p in problems), problems


def test_the_controller_package_is_built_from_the_sources(tmp_path: Path) -> None:
    """The committed zip is exactly what controller/ and its core modules build."""
    assert not controller_zip.stale(), "run `make controller-zip` and commit the zip"
    assert controller_zip.build() == controller_zip.build()  # reproducible
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "controller", copy / "controller")
    shutil.copytree(REPO / "core", copy / "core")
    (copy / "controller" / "handler.py").write_text("# changed\n")
    assert controller_zip.stale(repo=copy)


def test_validate_says_so_in_one_line_where_the_provider_is_absent(tmp_path: Path) -> None:
    script = REPO / "tests" / "tfshim" / "tfcheck.py"
    env = {**os.environ, "SPOTRELAY_TF_PLUGINS": str(tmp_path)}  # an empty mirror
    for extra, code in (([], 0), (["--require"], 1)):
        proc = subprocess.run(
            [sys.executable, str(script), "validate", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == code, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("SKIP  terraform validate + terraform test: no hashicorp/aws")
        assert lines[-1].startswith("0 passed, 0 failed,") and len(lines) == 2
