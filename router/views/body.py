"""Reading a request body within a size limit, whatever its framing.

Both planes read their bodies here (the data plane up to
``routing.max_body_bytes``, the control plane up to ``MAX_CONTROL_BODY``);
each answers the two failures in its own error shape.
"""

from __future__ import annotations

import logging

from flask import Request, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import RequestEntityTooLarge

from spotrelay.core.logs import clip

from ..transport.httpguard import ClientTimeout, close_after_response

log = logging.getLogger("spotrelay.router")


class BodyTooLarge(Exception):
    pass


#: What a body over the limit raises (Werkzeug's own, should anything read it first).
TOO_LARGE = (BodyTooLarge, RequestEntityTooLarge)


class BadBody(Exception):
    """The body could not be read: bad chunk framing, cut short, or too slow (``status``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def log(self, request_id: str | None) -> None:
        log.warning(
            "refused a request from %s: %d %s",
            request.remote_addr or "-",
            self.status,
            self.message,
            extra={"request_id": request_id} if request_id else None,
        )


def read_body(limit: int, current: Request | None = None) -> bytes:
    """The request body, at most ``limit`` bytes, whether or not it has a Content-Length.

    ``current``: the request, when the caller has bound it already
    (:mod:`.current`); else ``flask.request``.

    A declared length over the limit is refused before reading; a chunked body
    (gunicorn de-chunks it and marks the input terminated) is read up to one
    byte past the limit, so a huge upload costs at most ``limit`` of memory.
    A body that cannot be read is :class:`BadBody`, and the connection is
    closed after the answer (its framing is lost).
    """
    if current is None:
        current = request
    length = current.content_length  # None for Transfer-Encoding: chunked
    if length is not None and length > limit:
        raise BodyTooLarge
    environ = current.environ
    stream = environ["wsgi.input"]
    try:
        if length is not None:
            data = stream.read(length)
            if len(data) < length:
                raise BadBody(400, "incomplete_body", "body shorter than its Content-Length")
            return data
        if not environ.get("wsgi.input_terminated"):
            return b""
        data = stream.read(limit + 1)
    except ClientTimeout as exc:
        close_after_response(environ)
        raise BadBody(408, "request_timeout", str(exc)) from None
    except (ParseException, OSError, ValueError) as exc:  # NoMoreData is an OSError
        close_after_response(environ)
        message = f"request body is malformed: {clip(str(exc), 200)}"
        raise BadBody(400, "invalid_body", message) from None
    except BadBody:
        close_after_response(environ)
        raise
    if len(data) > limit:
        raise BodyTooLarge
    return data
