"""What an operator runs next to spotrelay: Prometheus rules and the Grafana dashboard.

The files ship inside the package so ``spotrelay demo --prometheus`` finds
them in an installed copy as in a checkout (:func:`rules_path`).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def rules_path() -> Path:
    """The alert and recording rules (``promtool check rules`` clean)."""
    return HERE / "prometheus" / "rules.yml"


def dashboard_path() -> Path:
    """The generated Grafana dashboard (``python -m spotrelay.observability.dashboard``)."""
    return HERE / "grafana" / "spotrelay.json"
