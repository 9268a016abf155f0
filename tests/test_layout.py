"""The repository's layout.

Each top-level package folder is one component, and the packaging, the type
checker and the Makefile all know every one of them; core/ holds only what
several components share. In tests/, shared helpers live in tests/support/, and
no module imports a test module (importing one runs its module-scoped setup and
couples unrelated files).
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_COMPONENTS = {"tests", "bench"}  # packages of the checkout that are not shipped


def components() -> set[str]:
    """Top-level folders that are Python packages, tests and benchmarks aside."""
    return {
        p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name not in NOT_COMPONENTS
    }


def test_every_component_is_packaged_typechecked_and_linked() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dir = project["tool"]["setuptools"]["package-dir"]
    assert package_dir == {f"spotrelay.{c}": c for c in components()}
    assert {f"spotrelay.{c}" for c in components()} <= set(
        project["tool"]["setuptools"]["packages"]
    )
    assert set(project["tool"]["mypy"]["packages"]) == {f"spotrelay.{c}" for c in components()}
    found = re.search(r"^COMPONENTS := (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert found is not None and set(found.group(1).split()) == components()


def core_users() -> dict[str, set[str]]:
    """core module -> the components (and Terraform modules) that use it.

    A core module used by another core module counts that one's users too, and
    the ``spotrelay`` CLI (core/cli.py) is used by every component it runs.
    """
    direct: dict[str, set[str]] = defaultdict(set)
    inside: dict[str, set[str]] = defaultdict(set)  # core module -> core modules importing it
    for component in components():
        for path in (REPO / component).rglob("*.py"):
            package = ".".join(("spotrelay", *path.relative_to(REPO).parent.parts))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                parts = node.module.split(".") if node.module else []
                if node.level:  # relative: resolved against the importing package
                    parts = package.split(".")[: package.count(".") + 2 - node.level] + parts
                if parts[:2] != ["spotrelay", "core"]:
                    continue
                for name in parts[2:3] or [alias.name for alias in node.names]:
                    if component == "core":
                        inside[name].add(path.stem)
                    else:
                        direct[name].add(component)
    direct["cli"] |= set(re.findall(r'"spotrelay\.(\w+)\.cli"', (REPO / "core/cli.py").read_text()))
    for path in (REPO / "terraform" / "modules").rglob("*"):
        if path.is_file() and path.suffix in (".tf", ".tftpl", ".sh", ".py"):
            for name in re.findall(r"spotrelay\.core\.(\w+)", path.read_text()):
                direct[name].add(
                    "terraform/" + path.relative_to(REPO / "terraform/modules").parts[0]
                )

    def users(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found = set(direct[name])
        for importer in inside[name] - seen:
            found |= users(importer, seen | {name})
        return found

    return {p.stem: users(p.stem) for p in (REPO / "core").glob("*.py") if p.stem != "__init__"}


# Parsers of a shared model kept beside it: each source's parser has one user
# today, but the model is one (docs/architecture.md) and the agent's event store
# takes events from either source.
MODEL_PARSERS = {"imds_events": "interruptions", "eventbridge_events": "interruptions"}


def test_core_holds_only_what_several_components_share() -> None:
    """A module only one component uses belongs in that component's folder."""
    users = core_users()
    assert all(len(users[model]) >= 2 for model in MODEL_PARSERS.values())
    lonely = {
        name: sorted(who)
        for name, who in users.items()
        if len(who) < 2 and name not in MODEL_PARSERS
    }
    assert lonely == {}, "move these to the one component that uses them"


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


def _concept_table() -> list[tuple[str, list[str]]]:
    """The rows of docs/architecture.md's "One home per concept": (concept, module paths)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## One home per concept", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("concept", "---"):
            continue
        rows.append((cells[0], re.findall(r"`([\w./]+\.(?:py|yml))`", cells[1])))
    return rows


def test_the_concept_table_names_modules_that_exist() -> None:
    rows = _concept_table()
    assert len(rows) >= 30, "the table was not found or lost its rows"
    missing = [(concept, p) for concept, paths in rows for p in paths if not (REPO / p).is_file()]
    assert not [c for c, paths in rows if not paths], "a concept without a module"
    assert missing == [], f"docs/architecture.md names modules that do not exist: {missing}"


# Named, with the reason, in docs/architecture.md "Size exceptions".
SIZE_EXCEPTIONS = {"router/metrics.py:RouterMetrics.__init__"}


def _oversized(path: Path) -> list[str]:
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                size = (child.end_lineno or child.lineno) - child.lineno + 1
                limit = 300 if isinstance(child, ast.ClassDef) else 60
                if size > limit:
                    out.append(f"{path.relative_to(REPO)}:{name} ({size} lines)")
                visit(child, f"{name}.")

    visit(ast.parse(path.read_text()), "")
    return out


def test_no_class_over_300_lines_or_function_over_60_unless_named() -> None:
    found = [
        o for c in sorted(components()) for p in (REPO / c).rglob("*.py") for o in _oversized(p)
    ]
    unnamed = [o for o in found if o.split(" (")[0] not in SIZE_EXCEPTIONS]
    assert unnamed == [], f"split these or name them in docs/architecture.md: {unnamed}"
    doc = (REPO / "docs" / "architecture.md").read_text().split("## Size exceptions", 1)[1]
    for name in SIZE_EXCEPTIONS:
        path, _, qual = name.partition(":")
        assert f"`{path}`" in doc and qual.split(".")[0] in doc, f"{name} not named in the doc"
