"""sidecar.http.hpack_codec and sidecar.http.huffman: RFC 7541's own examples, hpack as an oracle both
ways (what its encoder writes we decode, what our encoder writes it decodes), and the decoder's
errors and bounds."""

from __future__ import annotations

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.hpack_codec import CompressionError, HeaderDecoder, HeaderEncoder, HeaderListTooLarge, encode_integer
from sidecar.http.huffman import HuffmanError, huffman_codes, huffman_decode, huffman_encode

H = bytes.fromhex

# -- Huffman -------------------------------------------------------------------------------------


def test_canonical_codes_are_rfc_7541s() -> None:
    assert huffman_codes() == list(REQUEST_CODES)


@given(st.binary(max_size=200))
def test_huffman_round_trip_against_hpack(data: bytes) -> None:
    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)
    assert huffman_encode(data) == encoded
    assert huffman_decode(encoded) == data


def test_huffman_padding_rules() -> None:
    assert huffman_decode(H("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"  # C.4.1
    with pytest.raises(HuffmanError):
        huffman_decode(b"\xff\xff\xff\xff")  # 30 one bits: EOS
    with pytest.raises(HuffmanError):
        huffman_decode(huffman_encode(b"a") + b"\xff")  # padding longer than 7 bits
    with pytest.raises(HuffmanError):
        huffman_decode(bytes([0b00011000]))  # "a" (00011) then padding that is not all ones


# -- RFC 7541 Appendix C -------------------------------------------------------------------------


def test_c2_literal_representations() -> None:
    assert HeaderDecoder(4096).decode(H("400a637573746f6d2d6b65790d637573746f6d2d686561646572")) == [
        (b"custom-key", b"custom-header")
    ]
    assert HeaderDecoder(4096).decode(H("040c2f73616d706c652f70617468")) == [(b":path", b"/sample/path")]
    assert HeaderDecoder(4096).decode(H("100870617373776f726406736563726574")) == [(b"password", b"secret")]
    assert HeaderDecoder(4096).decode(H("82")) == [(b":method", b"GET")]


C3 = [
    (
        "828684410f7777772e6578616d706c652e636f6d",
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
    ),
    (
        "828684be58086e6f2d6361636865",
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"www.example.com"),
            (b"cache-control", b"no-cache"),
        ],
    ),
    (
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/index.html"),
            (b":authority", b"www.example.com"),
            (b"custom-key", b"custom-value"),
        ],
    ),
]
C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]


def test_c3_c4_requests_with_and_without_huffman() -> None:
    for blocks in ([b for b, _ in C3], C4):
        decoder = HeaderDecoder(4096)
        for block, (_, fields) in zip(blocks, C3, strict=True):
            assert decoder.decode(H(block)) == fields
        assert decoder.table == [
            (b"custom-key", b"custom-value"),
            (b"cache-control", b"no-cache"),
            (b":authority", b"www.example.com"),
        ]


C5 = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f"
    "7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d4153444a4b48514b"
    "425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31",
]
C6 = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af2708"
    "7f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]
C5_FIELDS = [
    [
        (b":status", b"302"),
        (b"cache-control", b"private"),
        (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
        (b"location", b"https://www.example.com"),
    ],
    [
        (b":status", b"307"),
        (b"cache-control", b"private"),
        (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
        (b"location", b"https://www.example.com"),
    ],
    [
        (b":status", b"200"),
        (b"cache-control", b"private"),
        (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"),
        (b"location", b"https://www.example.com"),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
    ],
]


def test_c5_c6_responses_with_eviction() -> None:
    for blocks in (C5, C6):
        decoder = HeaderDecoder(4096, settings_size=256)
        decoder.max_size = 256
        for block, fields in zip(blocks, C5_FIELDS, strict=True):
            assert decoder.decode(H(block)) == fields
        assert decoder.table == [
            (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
            (b"content-encoding", b"gzip"),
            (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"),
        ]


def test_integer_encoding_matches_rfc_7541_examples() -> None:
    assert encode_integer(10, 5, 0) == bytes([0b01010])  # C.1.1
    assert encode_integer(1337, 5, 0) == bytes([0b11111, 0b10011010, 0b00001010])  # C.1.2
    assert encode_integer(42, 8, 0) == bytes([42])  # C.1.3


# -- hpack as an oracle --------------------------------------------------------------------------

names = st.sampled_from([b":method", b":path", b":status", b"content-type", b"accept", b"x-request-id", b"www"]) | (
    st.binary(min_size=1, max_size=200).map(lambda b: b.lower())
)
values = st.sampled_from([b"GET", b"/", b"200", b"gzip, deflate", b""]) | st.binary(max_size=300)
field_lists = st.lists(st.tuples(names, values), max_size=30)


@given(
    st.lists(
        st.tuples(
            field_lists,
            st.booleans(),  # Huffman
            st.sampled_from([None, 0, 100, 1000, 4096]),  # a table size change first
            st.lists(st.booleans(), max_size=30),  # never-indexed fields
        ),
        max_size=6,
    )
)
def test_decodes_whatever_hpacks_encoder_writes(blocks: list) -> None:
    encoder, decoder = hpack.Encoder(), HeaderDecoder(1 << 24)
    for fields, huffman, table_size, sensitive in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        marked = [(n, v, s) for (n, v), s in zip(fields, sensitive + [False] * len(fields), strict=False)]
        assert decoder.decode(encoder.encode(marked, huffman=huffman)) == fields


@given(
    st.lists(
        st.tuples(field_lists, st.sampled_from([None, None, None, 0, 100, 1000, 4096, 8192])),
        min_size=1,
        max_size=8,
    )
)
def test_what_we_encode_hpacks_decoder_reads_with_the_same_table(blocks: list) -> None:
    """Block after block, with the peer's SETTINGS_HEADER_TABLE_SIZE changing now and then: both
    decoders read the fields, and their tables are exactly the encoder's."""
    encoder, theirs, ours = HeaderEncoder(), hpack.Decoder(), HeaderDecoder(1 << 24)
    for fields, table_size in blocks:
        if table_size is not None:  # the peer's SETTINGS, acknowledged before our next block
            theirs.max_allowed_table_size = table_size
            ours.settings_size = table_size
            encoder.peer_table_size(table_size)
        block = encoder.encode(fields)
        assert [(bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)] == fields
        assert ours.decode(block) == fields
        assert ours.table == encoder.table == [(bytes(n), bytes(v)) for n, v in theirs.header_table.dynamic_entries]


def test_repeated_fields_become_one_byte() -> None:
    encoder = HeaderEncoder()
    fields = [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"orders"), (b"user-agent", b"curl/8")]
    first = encoder.encode(fields)
    assert first[:2] == bytes([0x82, 0x84])  # static fields: their index, no table size update first
    assert encoder.encode(fields) == bytes([0x82, 0x84, 0xBF, 0xBE])  # both now in the dynamic table


def test_secrets_are_never_indexed_and_per_message_fields_are_not_indexed() -> None:
    encoder = HeaderEncoder()
    block = encoder.encode([(b"authorization", b"Bearer x"), (b"x-request-id", b"1"), (b"x-long", b"v" * 300)])
    assert block[:2] == bytes([0x1F, 23 - 15])  # never indexed, name index 23 (authorization)
    assert encoder.table == []
    assert hpack.Decoder().decode(block, raw=True)[0] == (b"authorization", b"Bearer x")


def test_a_smaller_peer_table_is_announced_with_its_lowest_size() -> None:
    encoder = HeaderEncoder()
    encoder.encode([(b"x-a", b"1")])
    encoder.peer_table_size(0)
    encoder.peer_table_size(100)
    block = encoder.encode([(b"x-b", b"2")])
    assert block[:3] == bytes([0x20, 0x3F, 100 - 31])  # to 0 (all evicted), then to 100
    assert encoder.table == [(b"x-b", b"2")]
    assert encoder.encode([(b"x-b", b"2")]) == bytes([0xBE])
    encoder.peer_table_size(1 << 20)  # larger than our 4096: we keep 4096
    assert encoder.max_size == 4096


def test_an_entry_that_fills_the_table_evicts_the_oldest() -> None:
    encoder, decoder = HeaderEncoder(), HeaderDecoder(1 << 20)
    for i in range(200):  # 200 entries of 42 bytes: far more than 4096 bytes
        field = [(b"x-n", b"%07d" % i)]
        assert decoder.decode(encoder.encode(field)) == field
    assert encoder.table == decoder.table and len(encoder.table) == 4096 // 42
    assert decoder.decode(encoder.encode([(b"x-n", b"0000199")])) == [(b"x-n", b"0000199")]


# -- errors and bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        "80",  # index 0
        "be",  # index 62: the dynamic table is empty
        "ff80808080808080",  # an integer past 32 bits
        "ff",  # ends inside an integer
        "400a6375",  # a string longer than the block
        "82 20",  # a table size update after a field
        "3fe21f",  # a table size update over the 4096 allowed
        "0085ffffffffff",  # a Huffman string with EOS
        "00",  # ends before the name
    ],
)
def test_invalid_blocks(block: str) -> None:
    with pytest.raises(CompressionError):
        HeaderDecoder(4096).decode(H(block.replace(" ", "")))


def test_table_size_updates_at_the_start_shrink_and_evict() -> None:
    decoder = HeaderDecoder(4096)
    decoder.decode(H("400a637573746f6d2d6b65790d637573746f6d2d686561646572"))
    assert decoder.table != []
    assert decoder.decode(H("20")) == []  # to 0: evicts everything
    assert decoder.table == [] and decoder.max_size == 0
    assert decoder.decode(H("3fe11f 82".replace(" ", ""))) == [(b":method", b"GET")]  # back to 4096
    assert decoder.max_size == 4096


def test_an_entry_larger_than_the_table_empties_it() -> None:
    decoder = HeaderDecoder(1 << 20, settings_size=100)
    decoder.decode(hpack.Encoder().encode([(b"a", b"b")]))
    assert decoder.table == [(b"a", b"b")]
    decoder.decode(HeaderEncoder().encode([]) + bytes([0x40, 1]) + b"n" + bytes([100]) + b"v" * 100)
    assert decoder.table == []


def test_the_list_bound_counts_32_octets_per_field() -> None:
    block = hpack.Encoder().encode([(b"a", b"b")] * 10)  # 10 * 34 bytes
    assert len(HeaderDecoder(340).decode(block)) == 10
    with pytest.raises(HeaderListTooLarge):
        HeaderDecoder(339).decode(block)


def test_an_indexed_bomb_stops_at_the_bound() -> None:
    encoder = hpack.Encoder()
    decoder = HeaderDecoder(100_000)
    decoder.decode(encoder.encode([(b"x-bomb", b"a" * 4000)]))
    block = encoder.encode([(b"x-bomb", b"a" * 4000)] * 10_000)  # one byte each
    assert len(block) == 10_000
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(block)
