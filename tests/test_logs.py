"""Secrets never reach logs, in either log format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from spotrelay.core import logs


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_tokens_are_redacted(fmt: str) -> None:
    stream = io.StringIO()
    logs.setup("info", fmt, stream=stream)
    try:
        log = logging.getLogger("t")
        log.info("auth header was %s", "Bearer abc.def-123")
        log.info("config node_token=supersecret api_key: k-999", extra={"node": "n1"})
    finally:
        logs.setup("warning", "human")
    text = stream.getvalue()
    assert "abc.def-123" not in text and "supersecret" not in text and "k-999" not in text
    assert text.count("<redacted>") == 3
    if fmt == "json":
        docs = [json.loads(line) for line in text.splitlines()]
        assert docs[1]["node"] == "n1" and docs[1]["level"] == "info"
