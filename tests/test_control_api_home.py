"""The control plane has one home: only core/control_api.py writes ``/nodes`` and ``/instances``.

Five clients once built these URLs by hand and guessed the answers' shapes
(two were unsure whether ``GET /nodes`` is a list or an object). Now the
router and every client take paths and shapes from ``core/control_api.py``
and call through ``core/control_client.py``; these checks read the source,
so a sixth hand-written client fails here instead of drifting in production.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("router", "sim", "core", "agent", "controller", "deploy", "bench")
HOME = Path("core/control_api.py")
# A path that starts with the segment, or one after a scheme and host ("http://h:1/nodes").
CONTROL_URL = re.compile(r"(?:^|://[^/\s]*)/(?:nodes|instances)(?![\w.-])")


def _sources() -> list[Path]:
    files = [p for folder in SCANNED for p in sorted((ROOT / folder).rglob("*.py"))]
    assert files, "no source found: the test reads the wrong folder"
    return files


def _prose(tree: ast.AST) -> set[int]:
    """Ids of the string statements (docstrings): they describe the API, they do not call it."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def control_urls(tree: ast.AST) -> list[int]:
    """Lines where a literal (or an f-string's literal part) starts a control-plane path."""
    prose = _prose(tree)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in prose:
            continue
        value = node.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str) and CONTROL_URL.search(value):
            lines.append(node.lineno)
    return lines


def test_only_the_control_api_writes_control_plane_paths() -> None:
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        if rel == HOME:
            continue
        for line in control_urls(ast.parse(path.read_text(), str(rel))):
            offenders.append(f"{rel}:{line}")
    assert offenders == [], (
        "control-plane paths written outside core/control_api.py (use its paths and "
        f"core/control_client.ControlClient): {offenders}"
    )


def test_the_home_defines_the_paths() -> None:
    """The scan looks for the right thing: the home itself would be caught."""
    assert control_urls(ast.parse((ROOT / HOME).read_text()))


@pytest.mark.parametrize(
    "source",
    [
        'url = base + "/nodes"',
        'url = f"{base}/instances/{instance_id}/drain"',
        'path = f"/nodes/{quote(node_id)}"',
        'req = Request(f"http://{HOST}:{port}/nodes/engine-{i}")',
        'conn.request("GET", "/nodes?x=1")',
        'URL = "https://router.internal:8081/nodes"',
        'body = b"/instances/i-0abc/drain"',
    ],
)
def test_the_scan_catches_a_hand_written_url(source: str) -> None:
    assert control_urls(ast.parse(source)) == [1]


@pytest.mark.parametrize(
    "source",
    [
        '"""Heartbeats are ``PUT /nodes/{id}``."""',
        'help_text = "second listener for /nodes, /instances and the ops endpoints"',
        'log.info("node token for GET /nodes")',
        'path = base + "/nodes_extra"',
        'path = "/v1/nodes"',
    ],
)
def test_the_scan_lets_prose_pass(source: str) -> None:
    """Docstrings, help and log text name the paths; they do not build URLs."""
    assert control_urls(ast.parse(source)) == []
