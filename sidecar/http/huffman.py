"""The HPACK Huffman code (RFC 7541 §5.2, Appendix B): decoding, sans-IO.

The code is canonical: each symbol's code follows from the code lengths alone (symbols ordered by
length, then by value, codes counting up), so the table below is the "len in bits" column of
Appendix B and the codes are derived from it. Decoding walks a finite-state machine four bits at a
time: a state is an inner node of the code tree, and one table lookup per nibble gives the next state
and the symbol completed, if any (no code is shorter than five bits, so a nibble completes at most
one). The table has 256 states by 16 nibbles, built once at import.

A string is rejected (`HuffmanError`) when it contains the EOS symbol, or ends with padding that is
longer than seven bits or is not the high bits of EOS (all ones), as §5.2 requires.
"""

from __future__ import annotations

__all__ = ["CODE_LENGTHS", "HuffmanError", "huffman_codes", "huffman_decode", "huffman_encode"]

# RFC 7541 Appendix B: the code length of each symbol 0-255 and of EOS (256), 32 to a line.
_CODE_LENGTHS_TABLE = """
13 23 28 28 28 28 28 28 28 24 30 28 28 30 28 28 28 28 28 28 28 28 30 28 28 28 28 28 28 28 28 28
6 10 10 12 13 6 8 11 10 10 8 11 8 6 6 6 5 5 5 6 6 6 6 6 6 6 7 8 15 6 12 10
13 6 7 7 7 7 7 7 7 7 7 7 7 7 7 7 7 7 7 7 7 7 7 7 8 7 8 13 19 13 14 6
15 5 6 5 6 5 6 6 6 5 7 7 6 6 6 5 6 7 6 5 5 6 7 7 7 7 7 15 11 14 13 28
20 22 20 20 22 22 22 23 22 23 23 23 23 23 24 23 24 24 22 23 24 23 23 23 23 21 22 23 22 23 23 24
22 21 20 22 22 23 23 21 23 22 22 24 21 22 23 23 21 21 22 21 23 22 23 23 20 22 22 22 23 22 22 23
26 26 20 19 22 23 22 25 26 26 26 27 27 26 24 25 19 21 26 27 27 26 27 24 21 21 26 26 28 27 27 27
20 24 20 21 22 21 21 23 22 22 25 25 24 24 26 23 26 27 26 26 27 27 27 27 27 28 27 27 27 27 27 26
30
"""
CODE_LENGTHS: tuple[int, ...] = tuple(int(length) for length in _CODE_LENGTHS_TABLE.split())
EOS = 256


class HuffmanError(ValueError):
    """A Huffman-coded string that RFC 7541 §5.2 does not allow."""


def huffman_codes() -> list[int]:
    """The code of each symbol, from the canonical ordering of the code lengths."""
    codes = [0] * len(CODE_LENGTHS)
    code = -1
    previous = 0
    for symbol in sorted(range(len(CODE_LENGTHS)), key=lambda s: (CODE_LENGTHS[s], s)):
        length = CODE_LENGTHS[symbol]
        code = (code + 1) << (length - previous)
        previous = length
        codes[symbol] = code
    return codes


_CODES = huffman_codes()


def _build_machine() -> tuple[list[int], list[bool]]:
    """The decoding table (state * 16 + nibble -> next state << 9 | 0x100 | symbol, or next state
    << 9 when no symbol completes, or -1 when the nibble completes EOS) and which states may end a
    string (padding of at most seven one bits)."""
    zero: list[int] = [0]  # child of each inner node: inner node id >= 0, or ~symbol for a leaf
    one: list[int] = [0]
    depth = [0]
    all_ones = [True]
    for symbol, code in enumerate(_CODES):
        length = CODE_LENGTHS[symbol]
        node = 0
        for bit_index in range(length - 1, -1, -1):
            bit = (code >> bit_index) & 1
            children = one if bit else zero
            if bit_index == 0:
                children[node] = ~symbol
                break
            child = children[node]
            if child == 0:  # no inner node there yet (0 is the root, never a child)
                child = len(zero)
                zero.append(0)
                one.append(0)
                depth.append(depth[node] + 1)
                all_ones.append(all_ones[node] and bit == 1)
                children[node] = child
            node = child
    table: list[int] = []
    for state in range(len(zero)):
        for nibble in range(16):
            node = state
            emitted = -1
            failed = False
            for shift in (3, 2, 1, 0):
                child = (one if (nibble >> shift) & 1 else zero)[node]
                if child < 0:
                    symbol = ~child
                    if symbol == EOS:
                        failed = True
                        break
                    emitted = symbol
                    node = 0
                else:
                    node = child
            if failed:
                table.append(-1)
            elif emitted >= 0:
                table.append(node << 9 | 0x100 | emitted)
            else:
                table.append(node << 9)
    accepting = [all_ones[s] and depth[s] <= 7 for s in range(len(zero))]
    return table, accepting


_MACHINE, _ACCEPTING = _build_machine()


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string; `HuffmanError` if RFC 7541 §5.2 does not allow it."""
    machine = _MACHINE
    out = bytearray()
    state = 0
    for byte in data:
        entry = machine[(state << 4) | (byte >> 4)]
        if entry < 0:
            raise HuffmanError("EOS in a Huffman-coded string")
        if entry & 0x100:
            out.append(entry & 0xFF)
        entry = machine[((entry >> 5) & ~0xF) | (byte & 0xF)]
        if entry < 0:
            raise HuffmanError("EOS in a Huffman-coded string")
        if entry & 0x100:
            out.append(entry & 0xFF)
        state = entry >> 9
    if not _ACCEPTING[state]:
        raise HuffmanError("invalid padding at the end of a Huffman-coded string")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """Huffman-code a string, padded with the high bits of EOS."""
    acc = 0
    bits = 0
    codes, lengths = _CODES, CODE_LENGTHS
    for byte in data:
        acc = (acc << lengths[byte]) | codes[byte]
        bits += lengths[byte]
    pad = -bits % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((bits + pad) // 8, "big")
