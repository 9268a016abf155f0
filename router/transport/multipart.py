"""Reading small fields (``model``, ``stream``) out of a multipart/form-data body in place.

An audio upload is buffered once (bounded by ``routing.max_body_bytes``: a
retry on another node needs the bytes again) and forwarded unchanged. To
route it the router needs only the ``model`` form field, so this scans the
buffer for part boundaries and headers and slices out just the small fields
it is asked for: the file part is never copied, decoded or parsed.

The scan is bounded, because it runs in the worker's one thread (a gevent
worker serves nothing else meanwhile): at most ``max_parts`` parts (vLLM's
own server, FastAPI on Starlette, refuses forms of more than 1,000 fields or
files anyway), part headers of at most ``MAX_PART_HEAD`` bytes, and only the
headers of parts that can be one of the wanted fields are parsed. The first
version parsed every part's headers: 300,000 tiny parts in 16 MiB held a
worker for 1.6 s.
"""

from __future__ import annotations

from werkzeug.http import parse_options_header

MAX_FIELD_BYTES = 4096  # a model name or a flag; anything longer is not what we look for
MAX_PART_HEAD = 16 * 1024  # the headers of one part (a browser sends ~100 bytes)
MAX_PARTS = 1000


class MultipartError(ValueError):
    """The body is not the multipart/form-data its Content-Type announces."""


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, or MultipartError."""
    mimetype, options = parse_options_header(content_type or "")
    if mimetype != "multipart/form-data":
        raise MultipartError("Content-Type must be multipart/form-data")
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise MultipartError("multipart/form-data without a valid boundary")
    return boundary.encode("latin-1")


def form_fields(
    body: bytes, boundary: bytes, names: frozenset[str], *, max_parts: int = MAX_PARTS
) -> dict[str, str]:
    """The values of the (non-file) fields in ``names``; parts are located, not copied.

    Raises :class:`MultipartError` for a malformed body, more than ``max_parts``
    parts, or a part whose headers exceed ``MAX_PART_HEAD``.
    """
    view = memoryview(body)
    delimiter = b"--" + boundary
    pos = body.find(delimiter)
    if pos < 0:
        raise MultipartError("multipart body has no boundary delimiter")
    found: dict[str, str] = {}
    wanted = tuple(name.encode() for name in names)
    parts = 0
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return found  # the close delimiter
        parts += 1
        if parts > max_parts:
            raise MultipartError(f"more than {max_parts} parts (routing.max_form_parts)")
        head_end = body.find(b"\r\n\r\n", pos, pos + MAX_PART_HEAD + 4)
        if head_end < 0:
            raise MultipartError(
                f"multipart part without a header end within {MAX_PART_HEAD} bytes"
            )
        next_delim = body.find(b"\r\n" + delimiter, head_end + 4)
        if next_delim < 0:
            raise MultipartError("multipart body is not terminated")
        head = bytes(view[pos:head_end])
        if not any(name in head for name in wanted):
            pos = next_delim + 2  # cannot be a wanted field: no header parsing
            continue
        name, is_file = _disposition(head)
        if name in names and not is_file and name not in found:
            value = view[head_end + 4 : next_delim]
            if len(value) <= MAX_FIELD_BYTES:
                found[name] = bytes(value).decode("utf-8", "replace")
        pos = next_delim + 2


def _disposition(headers: bytes) -> tuple[str | None, bool]:
    """The form field name of a part and whether it is a file upload."""
    for line in headers.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-disposition":
            kind, options = parse_options_header(value.decode("utf-8", "replace").strip())
            if kind != "form-data":
                return None, False
            return options.get("name"), "filename" in options
    return None, False
