"""How IMDS writes things: its two time formats, its JSON layout, its error page.

The instance documents, the events and the request handling of the emulator
all print through these, so a client parses what it would parse on EC2.
"""

from __future__ import annotations

import json
import time
from typing import Any

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def iso_utc(t: float) -> str:
    """``2024-05-01T12:00:00Z``: the format of spot and rebalance notices."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def aws_event_time(t: float) -> str:
    """``21 Jan 2019 09:00:43 GMT``: scheduled-event times (day not zero-padded)."""
    g = time.gmtime(t)
    clock = f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}"
    return f"{g.tm_mday} {_MONTHS[g.tm_mon - 1]} {g.tm_year} {clock} GMT"


def aws_json(doc: Any) -> str:
    """JSON laid out the way IMDS prints its documents (two-space indent, ``" : "``)."""
    return json.dumps(doc, indent=2, separators=(",", " : "))


def error_page(status: int) -> str:
    """The small XHTML page real IMDS sends with 4xx/5xx answers."""
    title = f"{status} - {_STATUS_TEXT.get(status, 'Error')}"
    return (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        f" <head>\n  <title>{title}</title>\n </head>\n"
        f" <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    )
