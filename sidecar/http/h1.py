"""HTTP/1.1 wire format, sans-IO: parse heads, decide body framing, decode and encode chunks.

Strict by design, because a proxy that reads a message differently from the server behind it is
how request smuggling happens: CRLF line endings only, no obs-fold, token-only field names, no
control characters in values, exactly one framing (Content-Length *or* chunked), chunk sizes of
plain hex. We never forward framing we did not produce: the serializers here write framing from
the body length, so whatever the client sent, the app sees one unambiguous message.

No trio import here; `transport/` feeds bytes in and writes what comes out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus

from .errors import BadRequest
from .message import Field, Headers

# Body framing values returned by the *_body_length functions (besides a byte count >= 0).
CHUNKED = -1
UNTIL_CLOSE = -2

MAX_CHUNK_LINE = 4096  # a chunk-size line longer than this is an attack, not a chunk
MAX_TRAILERS = 64 * 1024

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9]{2})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
# The same rule for a whole block of CRLF-terminated lines at once: each match is anchored at a line
# start and ends at its CRLF, so the block is valid exactly when every line produced a match. A value
# is runs of visible bytes joined by SP/HTAB, its trailing whitespace left out; the possessive
# quantifiers never backtrack, which makes the pass about twice as fast as a lazy `*?` value.
_VISIBLE = rb"[^\x00-\x20\x7f]"
_FIELD_LINES = re.compile(
    rb"^(" + _TOKEN + rb"):[ \t]*+(" + _VISIBLE + rb"*+(?:[ \t]++" + _VISIBLE + rb"++)*+)[ \t]*+\r\n", re.MULTILINE
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")

_NO_BODY_STATUS = frozenset({204, 304})
# Fields the codec itself decides on; collected while parsing so nothing rescans the head.
_FRAMING_FIELDS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"})
_NONE: tuple[bytes, ...] = ()
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class ProtocolViolation(ValueError):
    """The peer broke HTTP/1.1 framing. Server side turns it into 400, client side into 502."""


class TrailersTooLarge(ProtocolViolation):
    """A chunked body's trailer section is over its limit (server side: 431, like a head)."""


Framing = dict[bytes, list[bytes]]  # values of the _FRAMING_FIELDS present, by lower-case name


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    minor: int  # HTTP/1.<minor>
    headers: Headers
    framing: Framing | None = None  # filled by the parser; None means "scan headers"

    def values(self, name: bytes) -> list[bytes] | tuple[bytes, ...]:
        """Values of a framing field (host, content-length, transfer-encoding, connection, expect, upgrade)."""
        if self.framing is None:
            return self.headers.get_all(name)
        return self.framing.get(name, _NONE)


@dataclass(slots=True)
class ResponseHead:
    minor: int
    status: int
    reason: bytes
    headers: Headers
    framing: Framing | None = None

    def values(self, name: bytes) -> list[bytes] | tuple[bytes, ...]:
        if self.framing is None:
            return self.headers.get_all(name)
        return self.framing.get(name, _NONE)


def _parse_fields(block: bytes, framing: Framing | None = None) -> list[Field]:
    """Parse header lines (each ending in CRLF). One regex pass over the block does the work."""
    pairs = _FIELD_LINES.findall(block)
    if len(pairs) != block.count(b"\n"):
        _explain_bad_field(block)
    fields: list[Field] = [(name.lower(), name, value) for name, value in pairs]
    if framing is not None:
        for field in fields:
            if field[0] in _FRAMING_FIELDS:
                framing.setdefault(field[0], []).append(field[2])
    return fields


def _explain_bad_field(block: bytes) -> None:
    """Raise the ProtocolViolation that names what is wrong with a block that failed to parse."""
    for line in block.split(b"\r\n")[:-1]:
        if _FIELD.fullmatch(line) is None:
            if line[:1] in (b" ", b"\t"):
                raise ProtocolViolation("obsolete line folding in header")
            raise ProtocolViolation("malformed header field")
    raise ProtocolViolation("bare CR or LF in header")


def parse_request_head(block: bytes) -> RequestHead:
    """Parse a request head (without its final blank line). Raises BadRequest."""
    eol = block.find(b"\r\n")
    m = _REQUEST_LINE.fullmatch(block, 0, eol if eol >= 0 else len(block))
    if m is None:
        raise BadRequest("malformed request line")
    framing: Framing = {}
    try:
        fields = _parse_fields(block[eol + 2 :] + b"\r\n", framing) if eol >= 0 else []
    except ProtocolViolation as exc:
        raise BadRequest(str(exc)) from None
    return RequestHead(m.group(1), m.group(2), int(m.group(3)), Headers(fields), framing)


def parse_response_head(block: bytes) -> ResponseHead:
    """Parse a response head (without its final blank line). Raises ProtocolViolation."""
    eol = block.find(b"\r\n")
    m = _STATUS_LINE.fullmatch(block, 0, eol if eol >= 0 else len(block))
    if m is None:
        raise ProtocolViolation("malformed status line")
    framing: Framing = {}
    fields = _parse_fields(block[eol + 2 :] + b"\r\n", framing) if eol >= 0 else []
    return ResponseHead(int(m.group(1)), int(m.group(2)), m.group(3) or b"", Headers(fields), framing)


def _content_length(values: list[bytes] | tuple[bytes, ...]) -> int:
    if len(values) == 1:  # the usual case: one plain number
        text = values[0]
        if text.isdigit() and len(text) <= 18:
            return int(text)
    seen = {v.strip() for value in values for v in value.split(b",")}
    if len(seen) != 1:
        raise ProtocolViolation("conflicting Content-Length values")
    text = seen.pop()
    if not text.isdigit() or len(text) > 18:
        raise ProtocolViolation("invalid Content-Length")
    return int(text)


def request_body_length(head: RequestHead) -> int:
    """Bytes of body that follow a request head, or CHUNKED. Raises BadRequest on ambiguity."""
    te = head.values(b"transfer-encoding")
    if te:
        if head.values(b"content-length"):
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if head.minor == 0:
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if len(te) != 1 or te[0].strip().lower() != b"chunked":
            raise BadRequest("unsupported Transfer-Encoding")
        return CHUNKED
    cl = head.values(b"content-length")
    if cl:
        try:
            return _content_length(cl)
        except ProtocolViolation as exc:
            raise BadRequest(str(exc)) from None
    return 0


def response_body_length(head: ResponseHead, request_method: bytes) -> int:
    """Bytes of body that follow a response head, CHUNKED or UNTIL_CLOSE. Raises ProtocolViolation."""
    status = head.status
    if request_method == b"HEAD" or status < 200 or status in _NO_BODY_STATUS:
        return 0
    te = head.values(b"transfer-encoding")
    if te:
        codings = [c.strip().lower() for value in te for c in value.split(b",")]
        return CHUNKED if codings[-1] == b"chunked" else UNTIL_CLOSE
    cl = head.values(b"content-length")
    if cl:
        return _content_length(cl)
    return UNTIL_CLOSE


def connection_tokens(headers: Headers, values: list[bytes] | tuple[bytes, ...] | None = None) -> set[bytes]:
    """Lower-cased tokens of every Connection header (or of the given Connection values)."""
    tokens: set[bytes] = set()
    for value in headers.get_all(b"connection") if values is None else values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def wants_keep_alive(minor: int, headers: Headers, connection: list[bytes] | tuple[bytes, ...] | None = None) -> bool:
    """Whether the peer lets the connection carry another message after this one. `connection`,
    when given, holds the Connection values already picked out of `headers`."""
    if connection is None:
        connection = headers.get_all(b"connection")
    if not connection:
        return minor == 1
    tokens = connection_tokens(headers, connection)
    if b"close" in tokens:
        return False
    return minor == 1 or b"keep-alive" in tokens


class ChunkedDecoder:
    """Decode a chunked body out of a shared buffer, consuming exactly what belongs to the body.

    `next(buf)` returns a non-empty data chunk, None when it needs more bytes, or END when the
    last chunk and the trailer section are read (then `trailers` is set, or None if there were none).
    A trailer section over `max_trailers` bytes raises `TrailersTooLarge`.
    """

    __slots__ = ("_max_trailers", "_remaining", "_state", "trailers")

    _SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)

    def __init__(self, max_trailers: int = MAX_TRAILERS) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._max_trailers = max_trailers
        self.trailers: Headers | None = None

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def next(self, buf: bytearray) -> bytes | None:
        while True:
            state = self._state
            if state == self._DATA:
                if not buf:
                    return None
                n = min(self._remaining, len(buf))
                data = bytes(buf[:n])
                del buf[:n]
                self._remaining -= n
                if self._remaining == 0:
                    self._state = self._DATA_END
                return data
            if state == self._SIZE:
                i = buf.find(b"\r\n", 0, MAX_CHUNK_LINE)
                if i < 0:
                    if len(buf) >= MAX_CHUNK_LINE:
                        raise ProtocolViolation("chunk size line too long")
                    return None
                m = _CHUNK_SIZE.fullmatch(buf, 0, i)
                if m is None:
                    raise ProtocolViolation("invalid chunk size")
                size = int(m.group(1), 16)
                del buf[: i + 2]
                if size == 0:
                    self._state = self._TRAILERS
                else:
                    self._remaining = size
                    self._state = self._DATA
            elif state == self._DATA_END:
                if len(buf) < 2:
                    return None
                if buf[0] != 13 or buf[1] != 10:
                    raise ProtocolViolation("chunk data longer than its size")
                del buf[:2]
                self._state = self._SIZE
            elif state == self._TRAILERS:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    self._state = self._DONE
                    return END
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self._max_trailers:
                        raise TrailersTooLarge("trailer section too large")
                    return None
                if end > self._max_trailers:
                    raise TrailersTooLarge("trailer section too large")
                self.trailers = Headers(_parse_fields(bytes(buf[: end + 2])))
                del buf[: end + 4]
                self._state = self._DONE
                return END
            else:
                return END


END = b""  # what ChunkedDecoder.next returns at the end of the body (an empty chunk)


def _field_lines(parts: list[bytes], headers: Headers, length: int, declare_empty: bool) -> None:
    """Append header lines, writing framing for `length` (>=0, CHUNKED or UNTIL_CLOSE). An empty
    body is declared (`content-length: 0`) only when `declare_empty`: a response needs it to be
    delimited, a bodiless request does not."""
    wrote_length = False
    for lname, raw, value in headers.fields:
        if lname == b"content-length":
            # Keep the sender's field (and its casing) only when it still tells the truth.
            if length >= 0 and not wrote_length and value.strip() == str(length).encode():
                wrote_length = True
                parts += (raw, b": ", value, b"\r\n")
            continue
        if lname == b"transfer-encoding":
            continue
        parts += (raw, b": ", value, b"\r\n")
    if length == CHUNKED:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif (length > 0 or (length == 0 and declare_empty)) and not wrote_length:
        parts += (b"content-length: ", str(length).encode(), b"\r\n")


def request_head_bytes(method: bytes, target: bytes, headers: Headers, length: int) -> bytes:
    """Serialize a request head; `length` is the body size or CHUNKED."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    _field_lines(parts, headers, length, False)
    parts.append(b"\r\n")
    return b"".join(parts)


def response_head_bytes(
    status: int,
    reason: bytes,
    headers: Headers,
    length: int,
    *,
    minor: int = 1,
    close: bool = False,
    head_only: bool = False,
) -> bytes:
    """Serialize a response head. With `head_only` (HEAD, 204, 304) the headers pass as they are."""
    parts = [b"HTTP/1.1 ", str(status).encode(), b" ", reason or _REASONS.get(status, b"Unknown"), b"\r\n"]
    if head_only:
        for lname, raw, value in headers.fields:
            if lname != b"transfer-encoding":
                parts += (raw, b": ", value, b"\r\n")
    else:
        _field_lines(parts, headers, length, True)
    if close:
        parts.append(b"connection: close\r\n")
    elif minor == 0:
        parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk_bytes(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk_bytes(trailers: Headers | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    parts = [b"0\r\n"]
    for _, raw, value in trailers.fields:
        parts += (raw, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
