"""The test tree's layout: shared helpers live in tests/support/, and no module imports a
test module (importing one runs its module-scoped setup and couples unrelated files)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_test_modules(tree: ast.Module, package: str) -> list[str]:
    """The test modules (``test_*``) that ``tree`` imports; ``package`` resolves relative ones."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [n for n in names if any(p.startswith("test_") for p in n.split("."))]
    return found


def test_no_module_imports_a_test_module() -> None:
    offenders = []
    for path in sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]):
        package = ".".join(path.relative_to(REPO).parent.parts)
        for name in imported_test_modules(ast.parse(path.read_text(), str(path)), package):
            offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert offenders == [], "move shared helpers to tests/support/:\n" + "\n".join(offenders)


def test_the_check_sees_absolute_and_relative_imports() -> None:
    code = "\n".join(
        [
            "from tests.test_a import x",
            "from .test_b import y",
            "import tests.test_c",
            "from . import test_d",
        ]
    )
    assert imported_test_modules(ast.parse(code), "tests") == [
        "tests.test_a",
        "tests.test_a.x",
        "tests.test_b",
        "tests.test_b.y",
        "tests.test_c",
        "tests.test_d",
    ]
    assert imported_test_modules(ast.parse("from tests.support.aws import client"), "tests") == []
