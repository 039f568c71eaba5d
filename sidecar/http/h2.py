"""HTTP/2 ⇄ the message model, sans-IO: pseudo-headers, connection-specific fields, Host/:authority.

h2 (the state machine) does the framing; this module only translates header lists. HTTP/2 field names
are lower-case by definition, so the raw name equals the lookup name. No trio import here.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import BadRequest
from .message import Field, Headers

# Fields that are meaningless or forbidden in HTTP/2 (RFC 9113 §8.2.2); `te` is allowed as `trailers`.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"http2-settings"}
)


class RequestHeadH2:
    """The pseudo-headers of a request and its regular fields (with a `host` field guaranteed)."""

    __slots__ = ("authority", "headers", "method", "path", "scheme")

    def __init__(self, method: bytes, path: bytes, authority: bytes | None, scheme: bytes, headers: Headers) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.headers = headers


def request_from_h2(pairs: Iterable[tuple[bytes, bytes]]) -> RequestHeadH2:
    """Split an h2 request header list; raises BadRequest for a malformed one."""
    method = path = authority = scheme = None
    fields: list[Field] = []
    host: bytes | None = None
    for name, value in pairs:
        if name[:1] == b":":
            if fields:
                raise BadRequest("pseudo-header after a regular field")
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            else:
                raise BadRequest(f"unknown pseudo-header {name.decode('latin-1')}")
            continue
        if name in CONNECTION_SPECIFIC:
            raise BadRequest("connection-specific header in HTTP/2")
        if name == b"te" and value.strip().lower() != b"trailers":
            raise BadRequest("te other than trailers in HTTP/2")
        if name == b"host":
            host = value
        fields.append((name, name, value))
    if method is None or (method != b"CONNECT" and (path is None or scheme is None)):
        raise BadRequest("missing pseudo-header")
    if authority is None:
        authority = host
    if host is None and authority is not None:
        fields.insert(0, (b"host", b"host", authority))  # HTTP/1.1 upstreams need Host
    return RequestHeadH2(method, path or b"/", authority, scheme or b"http", Headers(fields))


def response_to_h2(status: int, headers: Headers) -> list[tuple[bytes, bytes]]:
    """The header list of a response sent over HTTP/2: `:status` first, connection fields dropped."""
    out = [(b":status", str(status).encode())]
    for lname, _, value in headers.fields:
        if lname not in CONNECTION_SPECIFIC:
            out.append((lname, value))
    return out


def trailers_to_h2(trailers: Headers) -> list[tuple[bytes, bytes]]:
    return [(lname, value) for lname, _, value in trailers.fields if lname not in CONNECTION_SPECIFIC]


def header_list_size(pairs: Iterable[tuple[bytes, bytes]]) -> int:
    """RFC 9113 §6.5.2: the size of a header list is name + value + 32 octets per field."""
    return sum(len(name) + len(value) + 32 for name, value in pairs)
