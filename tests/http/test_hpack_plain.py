"""sidecar.http.hpack_plain: what PlainEncoder writes decodes (with hpack's own decoder, as a peer
would) to exactly the fields given, and it never touches the dynamic table."""

from __future__ import annotations

import hpack
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.hpack_plain import PlainEncoder, encode_integer

names = st.sampled_from([b":method", b":path", b":status", b"content-type", b"accept", b"x-request-id", b"www"]) | (
    st.binary(min_size=1, max_size=200).map(lambda b: b.lower())
)
values = st.sampled_from([b"GET", b"/", b"200", b"gzip, deflate", b""]) | st.binary(max_size=300)


@given(st.lists(st.tuples(names, values), max_size=30), st.integers(min_value=1, max_value=4))
def test_round_trip_through_hpacks_decoder(fields: list[tuple[bytes, bytes]], blocks: int) -> None:
    encoder, decoder = PlainEncoder(), hpack.Decoder()
    for _ in range(blocks):  # several blocks on one connection: no state may leak between them
        decoded = decoder.decode(encoder.encode(fields), raw=True)
        assert [(bytes(n), bytes(v)) for n, v in decoded] == fields
    assert len(decoder.header_table.dynamic_entries) == 0


def test_static_fields_are_one_byte_and_the_first_block_announces_an_empty_table() -> None:
    encoder = PlainEncoder()
    assert encoder.encode([(b":method", b"GET"), (b":path", b"/")]) == bytes([0x20, 0x82, 0x84])
    assert encoder.encode([(b":method", b"GET")]) == bytes([0x82])  # announced once only


def test_a_table_size_change_from_the_peer_is_answered_with_an_update_to_zero() -> None:
    encoder = PlainEncoder()
    encoder.encode([(b":method", b"GET")])
    encoder.header_table_size = 0  # what h2 does on the peer's SETTINGS_HEADER_TABLE_SIZE
    assert encoder.encode([(b":method", b"GET")]) == bytes([0x20, 0x82])
    assert encoder.encode([(b":method", b"GET")]) == bytes([0x82])


def test_integer_encoding_matches_rfc_7541_examples() -> None:
    assert encode_integer(10, 5, 0) == bytes([0b01010])  # C.1.1
    assert encode_integer(1337, 5, 0) == bytes([0b11111, 0b10011010, 0b00001010])  # C.1.2
    assert encode_integer(42, 8, 0) == bytes([42])  # C.1.3
