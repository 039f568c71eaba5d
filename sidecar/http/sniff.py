"""What a connection speaks, from its first bytes: the HTTP/2 preface, an HTTP/1.x request line, or
anything else (taken as opaque TCP). Sans-IO: bytes in, a verdict out (or "not yet").

The verdict never consumes anything: the caller peeks at the bytes, so whatever takes the
connection afterwards reads them intact. A request line is recognised as RFC 9112 writes one:
a method token, one space, a request target without spaces or controls, one space, `HTTP/1.0` or
`HTTP/1.1`, then CRLF (or a bare LF, which the HTTP/1.1 server refuses on its own terms). A first
line longer than `max_line` without its end is not HTTP. A TLS ClientHello (0x16), a Redis command
(`*1\\r\\n`), a PostgreSQL startup message (a binary length) are decided at their first bytes.
"""

from __future__ import annotations

import re
from enum import Enum


class Speaks(Enum):
    HTTP2 = "h2"
    HTTP1 = "http1"
    TCP = "tcp"


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_METHOD = 32  # longer than any registered method: not an HTTP request

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb"{1,32}) [^\x00-\x20\x7f]+ HTTP/1\.[01]\r?")
# A prefix of a request line that is not complete yet: method, then target, then version, in part.
_PARTIAL = re.compile(
    rb"" + _TOKEN + rb"{1,32}(?: (?:[^\x00-\x20\x7f]+(?: (?:H(?:T(?:T(?:P(?:/(?:1(?:\.[01]?)?)?)?)?)?)?)?)?)?)?"
)
_VERSION_DONE = re.compile(rb".* HTTP/1\.[01]\r")


def sniff(first: bytes, max_line: int) -> Speaks | None:
    """The protocol `first` (the bytes received so far) opens with; None while it cannot tell yet."""
    if not first:
        return None
    if first[:24] == H2_PREFACE[: len(first)]:
        return Speaks.HTTP2 if len(first) >= len(H2_PREFACE) else None
    end = first.find(b"\n", 0, max_line)
    if end >= 0:
        return Speaks.HTTP1 if _REQUEST_LINE.fullmatch(first, 0, end) else Speaks.TCP
    if len(first) >= max_line:
        return Speaks.TCP
    partial = _PARTIAL.fullmatch(first) is not None or _VERSION_DONE.fullmatch(first) is not None
    return None if partial else Speaks.TCP
