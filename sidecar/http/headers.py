"""Header rules of a proxy hop (docs: behaviour/protocols.md), as pure functions over `Headers`.

- hop-by-hop fields (Connection and what it names, Keep-Alive, Proxy-*, TE except `trailers`,
  Transfer-Encoding, Upgrade) never cross a hop;
- `x-request-id` is kept, or generated;
- `x-forwarded-for` gets the peer appended, never overwritten; `x-forwarded-proto` is this hop's.

Each function makes a single pass over the fields: this runs on every request.
"""

from __future__ import annotations

import random

from .message import Field, Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)

_TE_TRAILERS: Field = (b"te", b"te", b"trailers")


def _named_by_connection(value: bytes, into: set[bytes]) -> None:
    for token in value.split(b","):
        token = token.strip().lower()
        if token and token not in HOP_BY_HOP:  # `keep-alive`, `close`: nothing more to drop
            into.add(token)


def strip_hop_by_hop(headers: Headers) -> None:
    """Remove hop-by-hop fields in place, keeping `te: trailers` when the sender asked for it."""
    named: set[bytes] | None = None
    keep_te = False
    out: list[Field] = []
    for field in headers.fields:
        lname = field[0]
        if lname in HOP_BY_HOP or lname.startswith(b"proxy-"):
            if lname == b"connection":
                if named is None:
                    named = set()
                _named_by_connection(field[2], named)
            elif lname == b"te" and b"trailers" in field[2].lower():
                keep_te = True
            continue
        out.append(field)
    if named:  # rare: the Connection header named more fields to drop
        out = [f for f in out if f[0] not in named]
    if keep_te:
        out.append(_TE_TRAILERS)
    headers.fields = out


_VARIANT_AND_VERSION = (0x8 << 60) | (0x4 << 76)  # RFC 9562 variant bits 10, version 4
_CLEAR_BITS = ~((0xC << 60) | (0xF << 76))


def new_request_id() -> bytes:
    """A random UUID4. Request ids need uniqueness, not secrecy: the fast PRNG is enough, and it
    spares a getrandom() syscall per request."""
    h = "%032x" % ((random.getrandbits(128) & _CLEAR_BITS) | _VARIANT_AND_VERSION)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


def prepare_forwarded_request(headers: Headers, peer_host: str, proto: bytes) -> bytes:
    """Apply every request-side header rule of one hop in a single pass; returns the request id.

    Strips hop-by-hop fields, appends `peer_host` to `x-forwarded-for`, sets `x-forwarded-proto`
    to `proto`, and keeps or adds `x-request-id`.
    """
    named: set[bytes] | None = None
    keep_te = False
    for lname, _, value in headers.fields:
        if lname == b"connection":
            if named is None:
                named = set()
            _named_by_connection(value, named)
        elif lname == b"te" and b"trailers" in value.lower():
            keep_te = True
    out: list[Field] = []
    request_id: bytes | None = None
    xff_at = -1
    peer = peer_host.encode()
    for field in headers.fields:
        lname = field[0]
        if lname in HOP_BY_HOP or lname.startswith(b"proxy-") or (named is not None and lname in named):
            continue
        if lname == b"x-forwarded-proto":
            continue
        if lname == b"x-forwarded-for":
            if xff_at < 0:
                xff_at = len(out)
                out.append(field)
            else:  # several fields are one list (RFC 9110 §5.3): fold them, in order
                prev = out[xff_at]
                out[xff_at] = (prev[0], prev[1], prev[2] + b", " + field[2])
            continue
        if lname == b"x-request-id" and request_id is None:
            request_id = field[2]
        out.append(field)
    if xff_at >= 0:
        prev = out[xff_at]
        out[xff_at] = (prev[0], prev[1], prev[2] + b", " + peer if prev[2] else peer)
    else:
        out.append((b"x-forwarded-for", b"x-forwarded-for", peer))
    out.append((b"x-forwarded-proto", b"x-forwarded-proto", proto))
    if request_id is None:
        request_id = new_request_id()
        out.append((b"x-request-id", b"x-request-id", request_id))
    if keep_te:
        out.append(_TE_TRAILERS)
    headers.fields = out
    return request_id
