"""SSE has one home: only router/stream/sse.py (and its named-event sibling) reads ``data:`` lines.

A hand-sliced ``data:`` field elsewhere is how the project once had five SSE
readers that disagreed at the edges (a missing space after the colon, a
multi-line event). These checks read the source, so a new reader fails here
instead of in production.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("router", "sim", "core", "agent", "controller", "deploy")
HOMES = {Path("router/stream/sse.py"), Path("router/stream/named_events.py")}
# Methods and operators that read a string: a "data:" literal passed to one parses SSE.
READERS = {
    "startswith",
    "endswith",
    "find",
    "rfind",
    "index",
    "rindex",
    "split",
    "rsplit",
    "partition",
    "rpartition",
    "removeprefix",
    "count",
    "compile",
    "match",
    "search",
    "fullmatch",
    "findall",
    "finditer",
}


def _sources() -> list[Path]:
    files = [p for folder in SCANNED for p in sorted((ROOT / folder).rglob("*.py"))]
    assert files, "no source found: the test reads the wrong folder"
    return files


def _is_data_literal(node: ast.AST) -> bool:
    if not isinstance(node, ast.Constant) or not isinstance(node.value, str | bytes):
        return False
    text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
    return "data:" in text


def data_readers(tree: ast.AST) -> list[int]:
    """Lines where a ``data:`` literal is used to read text rather than write it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in READERS and any(map(_is_data_literal, node.args)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(_is_data_literal, operands)):
                lines.append(node.lineno)
    return lines


def test_only_the_sse_module_reads_data_lines() -> None:
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        if rel in HOMES:
            continue
        for line in data_readers(ast.parse(path.read_text(), str(rel))):
            offenders.append(f"{rel}:{line}")
    assert offenders == [], f"SSE data: lines read outside router/stream/sse.py: {offenders}"


def test_the_stream_broken_code_is_defined_once() -> None:
    """Clients match on the code; two spellings of it drift apart."""
    defined = [
        str(path.relative_to(ROOT))
        for path in _sources()
        if '"upstream_stream_broken"' in path.read_text()
    ]
    assert defined == ["router/stream/sse.py"]


@pytest.mark.parametrize(
    "source",
    [
        'payload = event[5:] if event.startswith(b"data:") else b""',
        'head, _, rest = line.partition("data: ")',
        'ok = line[:5] == b"data:"',
        'PATTERN = re.compile(rb"^data: (.*)$")',
    ],
)
def test_the_scan_catches_a_hand_written_reader(source: str) -> None:
    """The check itself works: each way of reading a data: line is found."""
    assert data_readers(ast.parse(source)) == [1]


def test_the_scan_lets_writers_pass() -> None:
    """Writing an event (the simulator's hot path does) is not reading one."""
    assert data_readers(ast.parse('out = b"data: " + payload + b"\\n\\n"')) == []
