"""HPACK (RFC 7541), sans-IO: the decoder of received header blocks and the encoder of the blocks we send.

`HeaderDecoder` implements the whole of RFC 7541 for what peers send: the static table, a dynamic
table bounded by our SETTINGS_HEADER_TABLE_SIZE (size updates are checked against it and allowed at
the start of a block only), Huffman-coded strings, and integers bounded to 32 bits. It stops at
`max_list_size` (name + value + 32 octets per field, RFC 9113 §6.5.2) as it goes, so a block that
expands (an HPACK bomb: one byte naming a large table entry, again and again) costs at most that
much. Errors are `CompressionError` (the connection's COMPRESSION_ERROR) or `HeaderListTooLarge`.
The common cases (an indexed field, a literal with a short plain string) are decoded inline.

`HeaderEncoder` keeps no dynamic table and codes no string with Huffman: a field found whole in the
static table is sent as its index, any other as a literal without indexing (its name indexed when the
static table has it). A few bytes more per block on the wire, in exchange for encoding (and, at the
peer, decoding) that is a table lookup and two slices per field. Its first block, and the first after
the peer changes SETTINGS_HEADER_TABLE_SIZE, starts with a dynamic table size update to 0 (§4.2,
§6.3), so the peer's decoder knows for certain the table is unused.
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

    __slots__ = ("_entries", "_size", "max_list_size", "max_size", "settings_size")

    def __init__(self, max_list_size: int, settings_size: int = DEFAULT_TABLE_SIZE) -> None:
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
                if 0 < index <= _STATIC_LAST:
                    field = static[index]
                elif index > _STATIC_LAST and index - _STATIC_LAST <= len(entries):
                    field = entries[index - _STATIC_LAST - 1]
                else:
                    raise CompressionError(f"index {index} not in the table")
                budget -= len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
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
        return out


_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index in range(_STATIC_LAST, 0, -1):  # the lowest index wins
    _STATIC_FIELD[STATIC_TABLE[_index]] = _index
    _STATIC_NAME[STATIC_TABLE[_index][0]] = _index

_TABLE_SIZE_ZERO = 0x20  # dynamic table size update (001xxxxx) to 0


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


class HeaderEncoder:
    """The encoding side of one connection's HPACK context (see the module docstring)."""

    __slots__ = ("_announce",)

    def __init__(self) -> None:
        self._announce = True  # the next block starts with a table size update to 0

    def table_size_changed(self) -> None:
        """The peer changed SETTINGS_HEADER_TABLE_SIZE: announce our (empty) table again."""
        self._announce = True

    def encode(self, headers: Iterable[Sequence[bytes]]) -> bytes:
        out = bytearray()
        if self._announce:
            out.append(_TABLE_SIZE_ZERO)
            self._announce = False
        field_index = _STATIC_FIELD.get
        name_index = _STATIC_NAME.get
        for header in headers:
            name, value = header[0], header[1]
            index = field_index((name, value))
            if index is not None:  # indexed field (1xxxxxxx); every static index fits 7 bits
                out.append(0x80 | index)
                continue
            index = name_index(name)
            if index is None:  # literal without indexing, new name (0000 0000)
                out.append(0)
                out += _plain_string(name)
            elif index < 15:  # literal without indexing, indexed name (0000xxxx)
                out.append(index)
            else:
                out += encode_integer(index, 4, 0)
            out += _plain_string(value)
        return bytes(out)
