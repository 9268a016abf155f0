"""The metric names a PromQL expression reads, for checking dashboards against exporters.

Not a PromQL parser: it drops what cannot be a metric name (strings, label
matchers, ranges, grouping clauses, numbers, function calls and keywords) and
keeps the identifiers left, which is exact for the expressions spotrelay
ships (tests compare them with live scrapes).
"""

from __future__ import annotations

import re

KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    ]
)
_STRIP = (
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # strings (label values)
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # ranges and subqueries
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(?![A-Za-z0-9_:])(?!\s*\()")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")


def metric_names(expr: str) -> set[str]:
    """Names of the series ``expr`` selects (histogram ``_bucket`` names as written)."""
    for pattern in _STRIP:
        expr = pattern.sub(" ", expr)
    expr = _NUMBER.sub(" ", expr)
    return {m for m in _IDENT.findall(expr) if m not in KEYWORDS}


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics text offers, counting declared families with no sample.

    A labelled counter nobody has incremented yet shows only its ``# TYPE``
    line; its ``_total`` (counters) or ``_bucket``/``_sum``/``_count``
    (histograms) names are what queries use, so they count as exported.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.add(family)
            if kind == "counter":
                names.add(family if family.endswith("_total") else family + "_total")
            elif kind == "histogram":
                names.update(family + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
