"""sidecar.http.headers: hop-by-hop stripping and the forwarding rules of one hop."""

from __future__ import annotations

import uuid

import pytest

from sidecar.http.headers import new_request_id, prepare_forwarded_request, strip_hop_by_hop
from sidecar.http.message import Headers


def _stripped(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    headers = Headers.of(pairs)
    strip_hop_by_hop(headers)
    return [(raw, value) for _, raw, value in headers.fields]


# --------------------------------------------------------------------------------------------------
# strip_hop_by_hop
# --------------------------------------------------------------------------------------------------


def test_end_to_end_fields_untouched_in_order() -> None:
    pairs = [(b"Host", b"a"), (b"Content-Type", b"text/plain"), (b"X-Custom", b"1"), (b"Cookie", b"c=d")]
    assert _stripped(pairs) == pairs


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"keep-alive",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Proxy-Authorization",
        b"Proxy-Authenticate",
        b"Proxy-Connection",
        b"PROXY-Anything",
    ],
)
def test_hop_by_hop_removed(name: bytes) -> None:
    assert _stripped([(b"Host", b"a"), (name, b"x"), (b"X-Keep", b"1")]) == [(b"Host", b"a"), (b"X-Keep", b"1")]


def test_fields_named_by_connection_removed() -> None:
    pairs = [
        (b"Connection", b"X-Hop-One, x-hop-TWO"),
        (b"connection", b" keep-alive ,,close"),
        (b"X-Hop-One", b"1"),
        (b"X-HOP-TWO", b"2"),
        (b"X-Hop-Three", b"3"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Close", b"not a real header but named"),
    ]
    assert _stripped(pairs) == [(b"X-Hop-Three", b"3")]


def test_te_kept_only_as_trailers() -> None:
    assert _stripped([(b"TE", b"trailers"), (b"X-A", b"1")]) == [(b"X-A", b"1"), (b"te", b"trailers")]
    assert _stripped([(b"te", b"gzip, trailers;q=1")]) == [(b"te", b"trailers")]
    assert _stripped([(b"TE", b"gzip, deflate"), (b"X-A", b"1")]) == [(b"X-A", b"1")]
    assert _stripped([(b"TE", b"Trailers")]) == [(b"te", b"trailers")]


def test_te_trailers_kept_even_when_connection_names_te() -> None:
    # RFC 9110 §10.1.4: a sender of TE also lists it in Connection; `te: trailers` still crosses the hop
    assert _stripped([(b"Connection", b"TE"), (b"TE", b"trailers")]) == [(b"te", b"trailers")]


def test_strip_on_empty_headers() -> None:
    assert _stripped([]) == []


# --------------------------------------------------------------------------------------------------
# prepare_forwarded_request
# --------------------------------------------------------------------------------------------------


def _prepared(pairs: list[tuple[bytes, bytes]], peer: str = "10.1.2.3", proto: bytes = b"http"):
    headers = Headers.of(pairs)
    rid = prepare_forwarded_request(headers, peer, proto)
    return headers, rid


def test_xff_added_when_absent() -> None:
    headers, _ = _prepared([(b"Host", b"a")])
    assert headers.get_all(b"x-forwarded-for") == [b"10.1.2.3"]


def test_xff_appended_never_overwritten() -> None:
    headers, _ = _prepared([(b"X-Forwarded-For", b"203.0.113.7")])
    assert headers.get_all(b"x-forwarded-for") == [b"203.0.113.7, 10.1.2.3"]
    # The sender's casing of the field name is kept.
    assert [raw for lname, raw, _ in headers.fields if lname == b"x-forwarded-for"] == [b"X-Forwarded-For"]


def test_several_xff_fields_folded_in_order() -> None:
    headers, _ = _prepared(
        [
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"Host", b"a"),
            (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
            (b"X-FORWARDED-FOR", b"4.4.4.4"),
        ]
    )
    assert headers.get_all(b"x-forwarded-for") == [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4, 10.1.2.3"]
    assert [lname for lname, _, _ in headers.fields][:2] == [b"x-forwarded-for", b"host"]


def test_empty_xff_becomes_peer() -> None:
    headers, _ = _prepared([(b"X-Forwarded-For", b"")])
    assert headers.get_all(b"x-forwarded-for") == [b"10.1.2.3"]


def test_xff_ipv6_peer() -> None:
    headers, _ = _prepared([(b"X-Forwarded-For", b"1.1.1.1")], peer="::1")
    assert headers.get_all(b"x-forwarded-for") == [b"1.1.1.1, ::1"]


@pytest.mark.parametrize("proto", [b"http", b"https"])
def test_xfp_replaced(proto: bytes) -> None:
    headers, _ = _prepared(
        [(b"X-Forwarded-Proto", b"spoofed"), (b"x-forwarded-proto", b"ftp"), (b"Host", b"a")], proto=proto
    )
    assert headers.get_all(b"x-forwarded-proto") == [proto]


def test_request_id_kept() -> None:
    headers, rid = _prepared([(b"X-Request-ID", b"my-id-123"), (b"Host", b"a")])
    assert rid == b"my-id-123"
    assert headers.get_all(b"x-request-id") == [b"my-id-123"]
    assert [raw for lname, raw, _ in headers.fields if lname == b"x-request-id"] == [b"X-Request-ID"]


def test_request_id_generated() -> None:
    headers, rid = _prepared([(b"Host", b"a")])
    assert headers.get_all(b"x-request-id") == [rid]
    parsed = uuid.UUID(rid.decode())
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed).encode() == rid


def test_generated_request_ids_differ_per_request() -> None:
    ids = {_prepared([(b"Host", b"a")])[1] for _ in range(100)}
    assert len(ids) == 100


def test_prepare_strips_hop_by_hop_and_keeps_end_to_end() -> None:
    headers, _ = _prepared(
        [
            (b"Host", b"shop"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"s"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"Basic x"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
            (b"TE", b"trailers"),
            (b"Accept", b"*/*"),
            (b"X-Request-Id", b"r1"),
        ],
        proto=b"https",
    )
    assert [(raw, value) for _, raw, value in headers.fields] == [
        (b"Host", b"shop"),
        (b"Accept", b"*/*"),
        (b"X-Request-Id", b"r1"),
        (b"x-forwarded-for", b"10.1.2.3"),
        (b"x-forwarded-proto", b"https"),
        (b"te", b"trailers"),
    ]


def test_prepare_drops_te_without_trailers() -> None:
    headers, _ = _prepared([(b"TE", b"gzip"), (b"X-Request-Id", b"r")])
    assert b"te" not in headers


# --------------------------------------------------------------------------------------------------
# new_request_id
# --------------------------------------------------------------------------------------------------


def test_new_request_id_is_uuid4_text() -> None:
    for _ in range(2000):
        rid = new_request_id()
        assert isinstance(rid, bytes)
        assert len(rid) == 36
        text = rid.decode("ascii")
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # canonical lower-case 8-4-4-4-12
        assert text[14] == "4"
        assert text[19] in "89ab"


def test_new_request_id_unique() -> None:
    ids = {new_request_id() for _ in range(50_000)}
    assert len(ids) == 50_000


def test_new_request_id_random_bits_vary() -> None:
    """Every non-fixed hex digit takes several values over many ids (no stuck bits)."""
    ids = [new_request_id().decode().replace("-", "") for _ in range(2000)]
    for position in range(32):
        seen = {rid[position] for rid in ids}
        if position == 12:
            assert seen == {"4"}
        elif position == 16:
            assert seen == set("89ab")
        else:
            assert len(seen) == 16, position
