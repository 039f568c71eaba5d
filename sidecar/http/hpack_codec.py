"""HPACK (RFC 7541), sans-IO: the decoder of received header blocks and the encoder of the blocks we send.

`HeaderDecoder` implements the whole of RFC 7541 for what peers send: the static table, a dynamic
table bounded by our SETTINGS_HEADER_TABLE_SIZE (size updates are checked against it and allowed at
the start of a block only), Huffman-coded strings, and integers bounded to 32 bits. It stops at
`max_list_size` (name + value + 32 octets per field, RFC 9113 §6.5.2) as it goes, so a block that
expands (an HPACK bomb: one byte naming a large table entry, again and again) costs at most that
much. Errors are `CompressionError` (the connection's COMPRESSION_ERROR) or `HeaderListTooLarge`.
The common cases (an indexed field, a literal with a short plain string) are decoded inline.

`HeaderEncoder` indexes what repeats: a field found whole in the static table, or in its dynamic
table, goes out as one index (decoding it, at the peer, is one lookup); any other as a literal, added
to the table unless it is a secret (never indexed, §7.1.3), a field that changes with every message
(request ids, trace context, :path, content-length: they would only churn the table) or long. No
string is Huffman-coded: that would cost more CPU than the bytes it saves between sidecars.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from .huffman import HuffmanError, huffman_decode

__all__ = [
    "STATIC_TABLE",
    "CompressionError",
    "HeaderDecoder",
    "HeaderEncoder",
    "HeaderListTooLarge",
    "encode_integer",
]

# RFC 7541 Appendix A; index 0 is unused.
STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b"", b""),
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
_STATIC_LAST = len(STATIC_TABLE) - 1  # 61
_STATIC_NAMES = tuple(name for name, _ in STATIC_TABLE)
_STATIC_SIZES = tuple(len(name) + len(value) + 32 for name, value in STATIC_TABLE)
ENTRY_OVERHEAD = 32  # RFC 7541 §4.1, and the per-field overhead of a header list (RFC 9113 §6.5.2)
DEFAULT_TABLE_SIZE = 4096
_MAX_INTEGER = 1 << 32


class CompressionError(ValueError):
    """A header block RFC 7541 does not allow: the connection's COMPRESSION_ERROR."""


class HeaderListTooLarge(ValueError):
    """The decoded header list outgrew the decoder's bound."""


def _integer_tail(block: bytes, pos: int, value: int) -> tuple[int, int]:
    """The continuation bytes of an integer whose prefix was all ones (RFC 7541 §5.1), from `pos`:
    the integer and the position after it. Bounded to 32 bits."""
    shift = 0
    end = len(block)
    while True:
        if pos >= end:
            raise CompressionError("header block ends inside an integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if value >= _MAX_INTEGER:
            raise CompressionError("integer out of range")
        if not byte & 0x80:
            return value, pos
        shift += 7


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    """A string literal at `pos` (RFC 7541 §5.2): the string and the position after it."""
    if pos >= len(block):
        raise CompressionError("header block ends before a string")
    first = block[pos]
    length = first & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer_tail(block, pos, length)
    end = pos + length
    if end > len(block):
        raise CompressionError("string longer than the header block")
    data = block[pos:end]
    if first & 0x80:
        try:
            data = huffman_decode(data)
        except HuffmanError as exc:
            raise CompressionError(str(exc)) from None
    return data, end


class HeaderDecoder:
    """The decoding side of one connection's HPACK context (see the module docstring)."""

    __slots__ = ("_entries", "_size", "list_size", "max_list_size", "max_size", "settings_size")

    def __init__(self, max_list_size: int, settings_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.list_size = 0  # of the last block decoded (RFC 9113 §6.5.2)
        self._entries: deque[tuple[bytes, bytes]] = deque()  # newest first
        self._size = 0
        self.max_list_size = max_list_size
        self.settings_size = settings_size  # our SETTINGS_HEADER_TABLE_SIZE: the most the peer may use
        self.max_size = settings_size  # the size the peer's last update chose

    @property
    def table(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest first (for tests and diagnostics)."""
        return list(self._entries)

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if index <= _STATIC_LAST:
            if index == 0:
                raise CompressionError("index 0")
            return STATIC_TABLE[index]
        try:
            return self._entries[index - _STATIC_LAST - 1]
        except IndexError:
            raise CompressionError(f"index {index} not in the table") from None

    def _name(self, index: int) -> bytes:
        if 0 < index <= _STATIC_LAST:
            return _STATIC_NAMES[index]
        return self._field(index)[0]

    def _insert(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        entries = self._entries
        if size > self.max_size:  # RFC 7541 §4.4: the table is emptied, nothing added
            entries.clear()
            self._size = 0
            return
        total = self._size + size
        while total > self.max_size:
            old_name, old_value = entries.pop()
            total -= len(old_name) + len(old_value) + ENTRY_OVERHEAD
        entries.appendleft((name, value))
        self._size = total

    def _resize(self, size: int) -> None:
        if size > self.settings_size:
            raise CompressionError(f"table size {size} over the {self.settings_size} allowed")
        self.max_size = size
        entries = self._entries
        total = self._size
        while total > size:
            old_name, old_value = entries.pop()
            total -= len(old_name) + len(old_value) + ENTRY_OVERHEAD
        self._size = total

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one complete header block, in order."""
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        static = STATIC_TABLE
        static_sizes = _STATIC_SIZES
        entries = self._entries
        budget = self.max_list_size
        end = len(block)
        pos = 0
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field (1xxxxxxx)
                index = first & 0x7F
                pos += 1
                if index == 0x7F:
                    index, pos = _integer_tail(block, pos, index)
                if index <= 61:  # the static table (_STATIC_LAST)
                    if not index:
                        raise CompressionError("index 0")
                    field = static[index]
                    budget -= static_sizes[index]
                else:
                    try:
                        field = entries[index - 62]
                    except IndexError:
                        raise CompressionError(f"index {index} not in the table") from None
                    budget -= len(field[0]) + len(field[1]) + 32
                if budget < 0:
                    raise HeaderListTooLarge(f"header list over {self.max_list_size} bytes")
                append(field)
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update (001xxxxx)
                if out:
                    raise CompressionError("table size update after a field")
                size = first & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = _integer_tail(block, pos, size)
                self._resize(size)
                continue
            if first & 0x40:  # literal with incremental indexing (01xxxxxx)
                index = first & 0x3F
                prefix = 0x3F
            else:  # literal without indexing (0000xxxx) or never indexed (0001xxxx)
                index = first & 0x0F
                prefix = 0x0F
            pos += 1
            if index == prefix:
                index, pos = _integer_tail(block, pos, index)
            if index:
                name = _STATIC_NAMES[index] if index <= _STATIC_LAST else self._name(index)
            else:  # a literal name: a short plain string inline, anything else through _string
                length = block[pos] if pos < end else 0xFF
                if length < 0x7F and pos + 1 + length <= end:
                    name = block[pos + 1 : pos + 1 + length]
                    pos += 1 + length
                else:
                    name, pos = _string(block, pos)
            # The value: a short plain string inline, anything else through _string.
            length = block[pos] if pos < end else 0xFF
            if length < 0x7F and pos + 1 + length <= end:
                value = block[pos + 1 : pos + 1 + length]
                pos += 1 + length
            else:
                value, pos = _string(block, pos)
            budget -= len(name) + len(value) + ENTRY_OVERHEAD
            if budget < 0:
                raise HeaderListTooLarge(f"header list over {self.max_list_size} bytes")
            if first & 0x40:
                self._insert(name, value)
            append((name, value))
        self.list_size = self.max_list_size - budget
        return out


_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index in range(_STATIC_LAST, 0, -1):  # the lowest index wins
    _STATIC_FIELD[STATIC_TABLE[_index]] = _index
    _STATIC_NAME[STATIC_TABLE[_index][0]] = _index


def encode_integer(value: int, prefix_bits: int, first_byte_flags: int) -> bytes:
    """RFC 7541 §5.1: `value` in an N-bit prefix, the first byte's high bits set to the flags."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte_flags | value,))
    out = bytearray((first_byte_flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _plain_string(data: bytes) -> bytes:
    """RFC 7541 §5.2: a string literal, not Huffman-coded."""
    length = len(data)
    return (bytes((length,)) if length < 127 else encode_integer(length, 7, 0)) + data


NEVER_INDEXED = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
"""Secrets: sent as never-indexed literals (RFC 7541 §7.1.3), kept out of every table on the way."""
NOT_INDEXED = frozenset(
    {
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-amzn-trace-id",
        b"x-cloud-trace-context",
        b"grpc-trace-bin",
        b"content-length",
        b":path",
    }
)
"""Fields whose values change with every message: indexing them would only churn the table."""
MAX_INDEXED_VALUE = 256
"""Longer values are sent as literals: one would take a large share of the table."""


def _literal_prefixes(name: bytes) -> tuple[bytes, bytes, bytes]:
    """The start of a literal field with this name, in the three representations: with incremental
    indexing, without indexing, never indexed (the name as its static index, or as a string)."""
    index = _STATIC_NAME.get(name)
    if index is None:
        literal = _plain_string(name)
        return b"\x40" + literal, b"\x00" + literal, b"\x10" + literal
    return encode_integer(index, 6, 0x40), encode_integer(index, 4, 0x00), encode_integer(index, 4, 0x10)


_MAX_NAME_CACHE = 512


class HeaderEncoder:
    """The encoding side of one connection's HPACK context (see the module docstring).

    A field seen before goes out as the index of its entry in the dynamic table; a new one as a
    literal that the decoder adds to its table, unless the field is a secret (`NEVER_INDEXED`), one
    of the fields that change with every message (`NOT_INDEXED`), or long. The table mirrors the
    decoder's exactly: entries are numbered as they are inserted, a dict maps a field to its number
    (O(1) per field), and the oldest entries are evicted first, by RFC 7541's size rule.
    """

    __slots__ = ("_announce", "_entries", "_index", "_inserted", "_lowest", "_names", "_size", "max_size")

    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.max_size = max_size  # never more than the peer's SETTINGS_HEADER_TABLE_SIZE
        self._announce = max_size != DEFAULT_TABLE_SIZE  # the next block starts with a size update
        self._lowest = max_size  # the smallest size since the last update sent
        self._entries: deque[tuple[tuple[bytes, bytes], int]] = deque()  # (field, its size), oldest first
        self._index: dict[tuple[bytes, bytes], int] = {}  # field -> insertion number
        self._inserted = 0
        self._size = 0
        self._names: dict[bytes, tuple[bytes, bytes, bytes]] = {}

    def peer_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: the table fits in it, from the next block."""
        size = min(size, DEFAULT_TABLE_SIZE)
        if size != self.max_size:
            self.max_size = size
            self._lowest = min(self._lowest, size)
            self._announce = True
            self._evict(0)

    @property
    def table(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest first (for tests and diagnostics)."""
        return [field for field, _ in reversed(self._entries)]

    def _evict(self, room: int) -> None:
        entries = self._entries
        index = self._index
        limit = self.max_size - room
        size = self._size
        first = self._inserted - len(entries)  # the number of the oldest entry
        while size > limit:
            field, entry_size = entries.popleft()
            size -= entry_size
            if index.get(field) == first:
                del index[field]
            first += 1
        self._size = size

    def encode(self, headers: Iterable[Sequence[bytes]]) -> bytes:
        out = bytearray()
        if self._announce:  # the smallest size the table went down to, then its size now (§4.2)
            if self._lowest < self.max_size:
                out += encode_integer(self._lowest, 5, 0x20)
            out += encode_integer(self.max_size, 5, 0x20)
            self._announce = False
            self._lowest = self.max_size
        static = _STATIC_FIELD
        index = self._index
        names = self._names
        for header in headers:
            field = (header[0], header[1])
            position = static.get(field)
            if position is not None:  # indexed field (1xxxxxxx); every static index fits 7 bits
                out.append(0x80 | position)
                continue
            number = index.get(field)
            if number is not None:
                position = _STATIC_LAST + self._inserted - number
                if position < 127:
                    out.append(0x80 | position)
                else:
                    out += encode_integer(position, 7, 0x80)
                continue
            name, value = field
            prefixes = names.get(name)
            if prefixes is None:
                if len(names) >= _MAX_NAME_CACHE:
                    names.clear()
                prefixes = names[name] = _literal_prefixes(name)
            if name in NEVER_INDEXED:
                out += prefixes[2]
            elif name in NOT_INDEXED or len(value) > MAX_INDEXED_VALUE:
                out += prefixes[1]
            else:
                size = len(name) + len(value) + ENTRY_OVERHEAD
                if size > self.max_size:
                    out += prefixes[1]
                else:
                    out += prefixes[0]
                    self._evict(size)
                    self._entries.append((field, size))
                    self._size += size
                    index[field] = self._inserted
                    self._inserted += 1
            length = len(value)
            if length < 127:
                out.append(length)
            else:
                out += encode_integer(length, 7, 0)
            out += value
        return bytes(out)
