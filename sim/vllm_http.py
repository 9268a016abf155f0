"""JSON answers of the simulator in vLLM's compact layout, and OpenAI error bodies.

Shared by the generation routes, the request gate and the control API.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from spotrelay.core.errors import openai_error


def dumps(doc: Any) -> str:
    """Compact JSON (no spaces), as vLLM writes it."""
    return json.dumps(doc, separators=(",", ":"))


def json_response(
    doc: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(doc, status=status, headers=headers, dumps=dumps)


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    return json_response(openai_error(status, message, param=param), status=status)
