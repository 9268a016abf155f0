"""A scripted OpenAI-style engine over real HTTP, for stream behaviours no simulator fault makes.

Serves ``GET /health`` and streaming ``POST /v1/completions`` /
``/v1/chat/completions`` on loopback with chunked transfer encoding. Each
streaming request gets the next :class:`Script` (the last one repeats): its
text pieces as chunks, an optional finish chunk, then ``[DONE]`` or just the
end of the body. Every request body is recorded, so a test can check what a
continuation asked for (and its headers). It stands in for engines such as llama.cpp's server,
which ends a running stream cleanly and without a ``finish_reason``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    """What one streaming answer looks like."""

    pieces: list[str]
    finish: str | None = None  # None: the stream ends without a finish_reason
    done: bool = True  # send data: [DONE] (False: the body just ends, cleanly)
    itl_s: float = 0.0


@dataclass
class FakeEngine:
    url: str
    scripts: list[Script]
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # of each POST, as received
    chunk_id: str = "cmpl-fake"

    def next_script(self) -> Script:
        i = min(len(self.bodies) - 1, len(self.scripts) - 1)
        return self.scripts[i]


def _chunk(engine: FakeEngine, chat: bool, text: str | None, finish: str | None) -> dict:
    if chat:
        delta = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
        kind = "text_completion"
    return {
        "id": engine.chunk_id,
        "object": kind,
        "created": 1,
        "model": "fake",
        "choices": [choice],
    }


def _handler(engine: FakeEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._send(200, b"{}", "application/json")

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            engine.headers.append(dict(self.headers.items()))
            engine.bodies.append(body)
            script = engine.next_script()
            chat = self.path.endswith("/chat/completions")
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if chat:
                role = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}
                self._event({**_chunk(engine, True, None, None), "choices": [role]})
            for piece in script.pieces:
                if script.itl_s:
                    time.sleep(script.itl_s)
                self._event(_chunk(engine, chat, piece, None))
            if script.finish:
                self._event(_chunk(engine, chat, None, script.finish))
            if script.done:
                self._raw(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _event(self, doc: dict) -> None:
            self._raw(b"data: " + json.dumps(doc).encode() + b"\n\n")

        def _raw(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            self.wfile.flush()

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def fake_engine(*scripts: Script) -> Iterator[FakeEngine]:
    """Run a :class:`FakeEngine` on a free loopback port until the block ends."""
    engine = FakeEngine("", list(scripts))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(engine))
    server.daemon_threads = True
    engine.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
