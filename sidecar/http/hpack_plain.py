"""`PlainEncoder`: the HPACK encoder the sidecar's HTTP/2 connections send with, sans-IO.

hpack's own encoder inserts every field into the dynamic table and searches that table linearly for
each field it encodes; with a unique `x-request-id` (and trace ids) on every request the table fills
with entries never used again, and the search is most of what sending a header block costs. This
encoder keeps no dynamic table: a field found whole in the static table is sent as an index, any
other as a literal without indexing (its name indexed when the static table has it), no Huffman
coding. A few bytes more per header block on the wire, in exchange for a fraction of the CPU.

The first header block, and the first after the peer changes SETTINGS_HEADER_TABLE_SIZE, starts
with a dynamic table size update to 0 (RFC 7541 §4.2, §6.3): the peer's decoder then knows for
certain the table is unused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack.table import HeaderTable

_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FIELD.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)

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


def _string(data: bytes) -> bytes:
    """RFC 7541 §5.2: a string literal, not Huffman-coded."""
    length = len(data)
    return (bytes((length,)) if length < 127 else encode_integer(length, 7, 0)) + data


class PlainEncoder(hpack.Encoder):
    """An HPACK encoder without a dynamic table or Huffman coding (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._announce = True  # the next block starts with a table size update to 0

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        out = bytearray()
        if self._announce or self.table_size_changes:
            out.append(_TABLE_SIZE_ZERO)
            self._announce = False
            self.table_size_changes = []
        field_index = _STATIC_FIELD.get
        name_index = _STATIC_NAME.get
        for header in headers:
            name, value = header[0], header[1]
            index = field_index((name, value))
            if index is not None:  # indexed header field (1xxxxxxx); every static index fits 7 bits
                out.append(0x80 | index)
                continue
            index = name_index(name)
            if index is None:  # literal without indexing, new name (0000 0000)
                out.append(0)
                out += _string(name)
            elif index < 15:  # literal without indexing, indexed name (0000xxxx)
                out.append(index)
            else:
                out += encode_integer(index, 4, 0)
            out += _string(value)
        return bytes(out)
