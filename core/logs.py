"""Logging set-up shared by every subcommand: human lines or JSON lines.

Log records pass a redaction filter so a bearer token or node token that
slips into a message never reaches the log sink. Human lines escape control
characters (``\\x0a``...) in the message and every field, so a client-chosen
value with a newline (a model name, a path) cannot forge a log line; JSON
lines are escaped by JSON itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)((?:token|api[_-]?key|secret|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
    re.compile(r"(?i)(x-aws-ec2-metadata-token[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
]

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# C0/C1 controls, line/paragraph separators and bidirectional overrides: all can
# make a terminal or a log viewer show something other than what was logged.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with control characters written as ``\\xNN``/``\\uNNNN`` escapes."""
    return _CONTROLS.sub(_escape_char, text)


def clip(text: str, limit: int = 256) -> str:
    """At most ``limit`` characters of a client-chosen value, for logs and messages."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact(text: str) -> str:
    """Mask anything that looks like a credential in ``text``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1<redacted>", text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with :func:`redact` before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra=`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class HumanFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for terminals and journald."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        text = super().formatMessage(record)
        extras = {
            k: v
            for k, v in vars(record).items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        }
        if extras:
            text += " " + " ".join(f"{k}={escape_controls(str(v))}" for k, v in extras.items())
        return text


def setup(level: str = "info", fmt: str = "human", stream: Any = None) -> None:
    """Configure the root logger once per process (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter that would drown our own lines at info level.
    for noisy in (
        "urllib3",
        "botocore",
        "boto3",
        "werkzeug",
        "aiohttp.access",
        "httpx",
        "httpx2",
        "openai",
        "matplotlib",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
