"""Reading small fields (``model``, ``stream``) out of a multipart/form-data body in place.

An audio upload is buffered once (bounded by ``routing.max_body_bytes``: a
retry on another node needs the bytes again) and forwarded unchanged. To
route it the router needs only the ``model`` form field, so this scans the
buffer for part boundaries and headers and slices out just the small fields
it is asked for: the file part is never copied, decoded or parsed.
"""

from __future__ import annotations

from werkzeug.http import parse_options_header

MAX_FIELD_BYTES = 4096  # a model name or a flag; anything longer is not what we look for


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


def form_fields(body: bytes, boundary: bytes, names: frozenset[str]) -> dict[str, str]:
    """The values of the (non-file) fields in ``names``; parts are located, not copied."""
    view = memoryview(body)
    delimiter = b"--" + boundary
    pos = body.find(delimiter)
    if pos < 0:
        raise MultipartError("multipart body has no boundary delimiter")
    found: dict[str, str] = {}
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return found  # the close delimiter
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise MultipartError("multipart part without a header end")
        next_delim = body.find(b"\r\n" + delimiter, head_end + 4)
        if next_delim < 0:
            raise MultipartError("multipart body is not terminated")
        name, is_file = _disposition(bytes(view[pos:head_end]))
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
