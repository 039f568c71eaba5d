"""Validation of received HTTP/2 header blocks (RFC 9113 §8.2, §8.3), sans-IO.

A block that breaks these rules is malformed: the connection answers with a stream error
(PROTOCOL_ERROR) on that stream. Checked here:

- field names: lower case, token characters only (no empty name, no colon outside a pseudo-header);
- field values: no NUL, CR, LF or other control character (HTAB aside), no leading or trailing
  whitespace — the bytes our HTTP/1.1 parser refuses too, so nothing reaches an HTTP/1.1 peer that
  could not have come from one;
- pseudo-headers: only the ones the block may carry, each once, all before the regular fields;
  requests need :method, :scheme and :path (CONNECT: :authority and neither of the others), a
  response has a three-digit :status, trailers have none; :method is a token, :path starts with "/"
  (or is "*") and is visible ASCII, :scheme and :authority use their URI characters only;
- connection-specific fields (Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding,
  Upgrade) and a TE other than "trailers";
- Content-Length: digits only, and every copy equal; a Host that differs from :authority, or a
  request with neither, or two Hosts.

Several Cookie fields are joined with "; " (RFC 9113 §8.2.3), since the request may go on over
HTTP/1.1. The checks run over whole blocks at a time (a join and a `bytes.translate` for all names,
another for all values) rather than field by field, and names already seen valid (a bounded set of
short ones, shared by all connections) are not checked again: that is most of what makes them cheap.
"""

from __future__ import annotations

__all__ = [
    "Malformed",
    "check_request",
    "check_response",
    "check_trailers",
]

Header = tuple[bytes, bytes]


class Malformed(ValueError):
    """A header block RFC 9113 calls malformed."""


def _chars(*ranges: tuple[int, int], extra: bytes = b"") -> bytes:
    return bytes(c for low, high in ranges for c in range(low, high + 1)) + extra


_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAME_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_VALUE_CHARS = _chars((0x20, 0x7E), (0x80, 0xFF), extra=b"\t")
_VISIBLE = _chars((0x21, 0x7E))
_SCHEME_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."
_AUTHORITY_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:@[]"
_WHITESPACE = (b" ", b"\t")

CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_SPECIAL = CONNECTION_SPECIFIC | {b"te", b"content-length", b"host", b"cookie"}
_MAX_LENGTH_DIGITS = 18


_known_names: set[bytes] = set()  # names seen valid before: most blocks repeat the same few
_MAX_KNOWN_NAMES = 1024  # past this (a peer inventing names), start afresh
_MAX_KNOWN_NAME = 64  # longer names are checked every time: the set stays under 64 KiB


def _check_names_and_values(names: list[bytes], headers: list[Header]) -> None:
    """Every regular name (`names`) and every value (of all `headers`) is well formed."""
    if not _known_names.issuperset(names):
        if b"".join(names).translate(None, _NAME_CHARS) or not all(names):
            bad = next(n for n in names if not n or n.translate(None, _NAME_CHARS))
            if bad[:1] == b":":
                raise Malformed(f"pseudo-header {bad!r} after a regular field, or repeated")
            raise Malformed(f"invalid field name {bad!r}")
        if len(_known_names) >= _MAX_KNOWN_NAMES:
            _known_names.clear()
        _known_names.update(name for name in names if len(name) <= _MAX_KNOWN_NAME)
    values = b"\n".join([h[1] for h in headers])
    if (
        len(values.translate(None, _VALUE_CHARS)) != len(headers) - 1  # only the separators are left
        or b"\n " in values
        or b" \n" in values
        or b"\n\t" in values
        or b"\t\n" in values
        or values.startswith(_WHITESPACE)
        or values.endswith(_WHITESPACE)
    ):
        bad = next(
            v
            for _, v in headers
            if v.translate(None, _VALUE_CHARS) or v.startswith(_WHITESPACE) or v.endswith(_WHITESPACE)
        )
        raise Malformed(f"invalid field value {bad[:40]!r}")


def _values(regular: list[Header], names: list[bytes], name: bytes) -> list[bytes]:
    """The values of the fields called `name` (present at least once)."""
    if names.count(name) == 1:
        return [regular[names.index(name)][1]]
    return [value for other, value in regular if other == name]


def _special_fields(
    regular: list[Header], names: list[bytes], special: frozenset[bytes]
) -> tuple[int, list[bytes] | None, bool]:
    """The checks of the fields with a role in HTTP/2 itself: the content length (-1 when absent),
    the Host values (None when absent), and whether Cookie appears more than once."""
    if not special.isdisjoint(CONNECTION_SPECIFIC):
        raise Malformed(f"connection-specific field {sorted(special & CONNECTION_SPECIFIC)[0]!r}")
    length = -1
    if b"content-length" in special:
        lengths = _values(regular, names, b"content-length")
        first = lengths[0]
        if not first.isdigit() or len(first) > _MAX_LENGTH_DIGITS:
            raise Malformed("invalid content-length")
        if lengths.count(first) != len(lengths):
            raise Malformed("differing content-length values")
        length = int(first)
    if b"te" in special:
        for value in _values(regular, names, b"te"):
            if value.lower() != b"trailers":
                raise Malformed("te other than trailers")
    hosts = _values(regular, names, b"host") if b"host" in special else None
    return length, hosts, b"cookie" in special and names.count(b"cookie") > 1


def _join_cookies(headers: list[Header]) -> list[Header]:
    """The list with its Cookie fields joined into one, where the first was (RFC 9113 §8.2.3)."""
    cookies = [value for name, value in headers if name == b"cookie"]
    out: list[Header] = []
    for header in headers:
        if header[0] != b"cookie":
            out.append(header)
        elif cookies:
            out.append((b"cookie", b"; ".join(cookies)))
            cookies = []
    return out


def check_request(headers: list[Header]) -> tuple[list[Header], bytes, int]:
    """Validate a request header block: the list (cookies joined), the method, and the declared
    content length (-1 when absent). Raises `Malformed`."""
    method = scheme = path = authority = None
    count = len(headers)
    i = 0
    while i < count:
        name, value = headers[i]
        if name[:1] != b":":
            break
        if name == b":method" and method is None:
            method = value
        elif name == b":path" and path is None:
            path = value
        elif name == b":scheme" and scheme is None:
            scheme = value
        elif name == b":authority" and authority is None:
            authority = value
        else:
            raise Malformed(f"pseudo-header {name!r} not allowed here, or repeated")
        i += 1
    if method is None or not method or method.translate(None, _TOKEN):
        raise Malformed("missing or invalid :method")
    if method == b"CONNECT":
        if scheme is not None or path is not None or not authority:
            raise Malformed("CONNECT takes :authority alone")
    else:
        if scheme is None or path is None:
            raise Malformed("missing :scheme or :path")
        if not scheme or scheme.translate(None, _SCHEME_CHARS):
            raise Malformed("invalid :scheme")
        if not (path[:1] == b"/" or path == b"*") or path.translate(None, _VISIBLE):
            raise Malformed("invalid :path")
    if authority is not None and authority.translate(None, _AUTHORITY_CHARS):
        raise Malformed("invalid :authority")
    regular = headers[i:] if i else headers
    names = [h[0] for h in regular]
    _check_names_and_values(names, headers)
    length = -1
    special = _SPECIAL.intersection(names)
    if special:
        length, hosts, join = _special_fields(regular, names, special)
        if hosts is not None:
            if len(hosts) > 1:
                raise Malformed("more than one host")
            if authority is not None and hosts[0] != authority:
                raise Malformed("host differs from :authority")
        elif authority is None:
            raise Malformed("neither :authority nor host")
        if join:
            headers = _join_cookies(headers)
    elif authority is None:
        raise Malformed("neither :authority nor host")
    return headers, method, length


def check_response(headers: list[Header]) -> tuple[int, int]:
    """Validate a response header block: its status and declared content length (-1 when absent).
    Raises `Malformed`."""
    if not headers or headers[0][0] != b":status":
        raise Malformed("missing :status, or not first")
    status = headers[0][1]
    if len(status) != 3 or not status.isdigit():
        raise Malformed("invalid :status")
    regular = headers[1:]
    names = [h[0] for h in regular]
    _check_names_and_values(names, headers)
    length = -1
    special = _SPECIAL.intersection(names)
    if special:
        length, _, _ = _special_fields(regular, names, special)
    return int(status), length


def check_trailers(headers: list[Header]) -> list[Header]:
    """Validate a trailer block (no pseudo-headers): the list, cookies joined. Raises `Malformed`."""
    names = [h[0] for h in headers]
    _check_names_and_values(names, headers)
    special = _SPECIAL.intersection(names)
    if special:
        _, _, join = _special_fields(headers, names, special)
        if join:
            return _join_cookies(headers)
    return headers
