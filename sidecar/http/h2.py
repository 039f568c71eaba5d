"""HTTP/2 ⇄ the message model, sans-IO: pseudo-headers, connection-specific fields, Host/:authority,
and the header-name casing carried across a sidecar-to-sidecar HTTP/2 hop.

`h2_conn` (the connection codec) does the framing and validates what it receives; this module only
translates header lists. HTTP/2 field names are lower-case by definition. The sidecar keeps an
HTTP/1.1 client's header-name casing all the way to an HTTP/1.1 app, so when both ends of an HTTP/2
hop are sidecars (mutual TLS), the sender lists the names whose casing is not lower-case in one
internal field, `x-sidecar-header-case`, and the receiver puts that casing back and drops the field.
From any other peer the field is dropped unread. No trio import here.
"""

from __future__ import annotations

from .errors import BadRequest
from .message import Field, Headers

# Fields that are meaningless or forbidden in HTTP/2 (RFC 9113 §8.2.2); `te` is allowed as `trailers`.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"http2-settings"}
)


# Internal: the HTTP/1.1 casing of the names in this header block (comma-separated), mesh hops only.
HEADER_CASE = b"x-sidecar-header-case"


def case_hint(fields: list[Field]) -> bytes | None:
    """The `x-sidecar-header-case` value for these fields: their names not in lower case, each once."""
    cased: list[bytes] = []
    for lname, raw, _ in fields:
        if raw != lname and raw not in cased and lname != HEADER_CASE:
            cased.append(raw)
    return b",".join(cased) if cased else None


_CASINGS: dict[bytes, dict[bytes, bytes]] = {}  # hint -> {lower-case name: its casing}
_MAX_CASINGS = 256  # a peer's messages carry a handful of distinct hints; past this, start afresh


def _casing(hint: bytes) -> dict[bytes, bytes]:
    casing = _CASINGS.get(hint)
    if casing is None:
        if len(_CASINGS) >= _MAX_CASINGS:
            _CASINGS.clear()
        casing = _CASINGS[hint] = {raw.lower(): raw for raw in hint.split(b",") if raw}
    return casing


def restore_case(fields: list[Field], hint: bytes) -> list[Field]:
    """The fields with the names listed in `hint` given back their casing."""
    casing = _casing(hint)
    return [(lname, casing.get(lname, raw), value) for lname, raw, value in fields]


def fields_from_h2(pairs: list[tuple[bytes, bytes]], *, from_mesh: bool) -> list[Field]:
    """Regular fields of a received header block (response head or trailers), with the sending
    sidecar's casing put back when the peer is a sidecar; pseudo-headers are skipped."""
    names = [pair[0] for pair in pairs]
    if HEADER_CASE not in names:
        return [(name, name, value) for name, value in pairs if name[:1] != b":"]
    hint = pairs[len(names) - 1 - names[::-1].index(HEADER_CASE)][1]  # the last one
    fields: list[Field] = [(name, name, value) for name, value in pairs if name[:1] != b":" and name != HEADER_CASE]
    return restore_case(fields, hint) if from_mesh else fields


_NOT_SENT = CONNECTION_SPECIFIC | {HEADER_CASE}
_NOT_SENT_IN_REQUESTS = _NOT_SENT | {b"host"}  # carried as :authority


def fields_to_h2(fields: list[Field], *, to_mesh: bool, request: bool = False) -> list[tuple[bytes, bytes]]:
    """Regular fields to send: connection-specific ones dropped (and `host` from a request, which
    travels as :authority), and on a hop to another sidecar the casing hint appended when some name
    is not lower case."""
    skip = _NOT_SENT_IN_REQUESTS if request else _NOT_SENT
    out = [(lname, value) for lname, _, value in fields if lname not in skip]
    if to_mesh:
        hint = case_hint(fields)
        if hint is not None:
            out.append((HEADER_CASE, hint))
    return out


class RequestHeadH2:
    """The pseudo-headers of a request and its regular fields (with a `host` field guaranteed)."""

    __slots__ = ("authority", "headers", "method", "path", "scheme")

    def __init__(self, method: bytes, path: bytes, authority: bytes | None, scheme: bytes, headers: Headers) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.headers = headers


def request_from_h2(pairs: list[tuple[bytes, bytes]], *, from_mesh: bool = False) -> RequestHeadH2:
    """Split a request header list, as `h2_conn` delivers it: validated already (pseudo-headers
    first, each once, the required ones present; no connection-specific field; a TE of "trailers"
    only; a Host equal to :authority), so nothing of that is checked again here. HTTP2-Settings,
    which HTTP/2 does not call connection-specific, is refused (BadRequest). `from_mesh`: the peer is
    a verified sidecar, whose casing hint is honoured."""
    method = path = authority = scheme = None
    i = 0
    count = len(pairs)
    while i < count:
        name, value = pairs[i]
        if name[:1] != b":":
            break
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":authority":
            authority = value
        else:
            scheme = value
        i += 1
    if method is None:
        raise BadRequest("missing pseudo-header")
    regular = pairs[i:] if i else pairs
    names = [pair[0] for pair in regular]
    fields: list[Field] = [(name, name, value) for name, value in regular]
    hint = None
    if b"http2-settings" in names:
        raise BadRequest("connection-specific header in HTTP/2")
    if HEADER_CASE in names:
        hint = regular[len(names) - 1 - names[::-1].index(HEADER_CASE)][1]  # the last one, as a loop would
        fields = [field for field in fields if field[0] != HEADER_CASE]
    if b"host" in names:
        if authority is None:
            authority = regular[names.index(b"host")][1]
    elif authority is not None:
        fields.insert(0, (b"host", b"host", authority))  # HTTP/1.1 upstreams need Host
    if hint is not None and from_mesh:
        fields = restore_case(fields, hint)
    return RequestHeadH2(method, path or b"/", authority, scheme or b"http", Headers(fields))


def response_to_h2(status: int, headers: Headers, *, to_mesh: bool = False) -> list[tuple[bytes, bytes]]:
    """The header list of a response sent over HTTP/2: `:status` first, connection fields dropped."""
    return [(b":status", str(status).encode()), *fields_to_h2(headers.fields, to_mesh=to_mesh)]


def trailers_to_h2(trailers: Headers, *, to_mesh: bool = False) -> list[tuple[bytes, bytes]]:
    return fields_to_h2(trailers.fields, to_mesh=to_mesh)
