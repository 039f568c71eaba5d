"""HTTP/2 header translation (sans-IO): pseudo-headers, connection-specific fields, and the casing
hint that carries HTTP/1.1 header-name casing across a sidecar-to-sidecar HTTP/2 hop."""

from __future__ import annotations

import pytest

from sidecar.http.errors import BadRequest
from sidecar.http.h2 import (
    HEADER_CASE,
    case_hint,
    fields_from_h2,
    fields_to_h2,
    request_from_h2,
    response_to_h2,
    trailers_to_h2,
)
from sidecar.http.h2_conn import HEADERS_RECEIVED, ErrorCode
from sidecar.http.message import Headers
from tests.http.h2_frames import Frames, resets, server

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"orders:8080"), (b":path", b"/a?b=1")]


def test_request_pseudo_headers_and_host_from_authority() -> None:
    head = request_from_h2([*REQUEST, (b"accept", b"*/*")])
    assert (head.method, head.path, head.authority, head.scheme) == (b"GET", b"/a?b=1", b"orders:8080", b"https")
    assert head.headers.fields == [(b"host", b"host", b"orders:8080"), (b"accept", b"accept", b"*/*")]


@pytest.mark.parametrize(
    "pairs",
    [
        [(b":method", b"GET"), (b":authority", b"a"), (b":path", b"/")],  # no :scheme
        [*REQUEST, (b"connection", b"keep-alive")],
        [*REQUEST, (b"te", b"gzip")],
        [(b"accept", b"*/*"), *REQUEST],  # pseudo-header after a regular field
        [*REQUEST, (b":bogus", b"1")],  # unknown pseudo-header
    ],
)
def test_malformed_requests_are_refused(pairs: list[tuple[bytes, bytes]]) -> None:
    """By the codec, before any translation: the stream is reset (PROTOCOL_ERROR), no request made."""
    conn = server()
    events = conn.receive(Frames().headers(1, pairs))
    assert [e for e in events if e[0] == HEADERS_RECEIVED] == []
    assert resets(conn.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}


def test_http2_settings_is_refused_by_the_translation() -> None:
    with pytest.raises(BadRequest):
        request_from_h2([*REQUEST, (b"http2-settings", b"AAMAAABkAAQAAP__")])


def test_case_hint_lists_each_cased_name_once() -> None:
    fields = Headers.of([(b"Host", b"a"), (b"x-lower", b"1"), (b"X-Legacy", b"1"), (b"X-Legacy", b"2")]).fields
    assert case_hint(fields) == b"Host,X-Legacy"
    assert case_hint(Headers.of([(b"accept", b"*/*")]).fields) is None


def test_request_casing_travels_to_a_mesh_peer_and_back() -> None:
    fields = Headers.of([(b"Host", b"orders"), (b"X-MiXeD", b"1"), (b"accept", b"*/*"), (b"Connection", b"x")]).fields
    sent = fields_to_h2(fields, to_mesh=True, request=True)
    assert sent == [(b"x-mixed", b"1"), (b"accept", b"*/*"), (HEADER_CASE, b"Host,X-MiXeD,Connection")]
    head = request_from_h2([*REQUEST, *sent], from_mesh=True)
    assert [raw for _, raw, _ in head.headers.fields] == [b"Host", b"X-MiXeD", b"accept"]
    assert HEADER_CASE not in head.headers


def test_a_casing_hint_from_a_non_mesh_peer_is_dropped_unread() -> None:
    head = request_from_h2([*REQUEST, (b"x-a", b"1"), (HEADER_CASE, b"X-A")], from_mesh=False)
    assert head.headers.fields == [(b"host", b"host", b"orders:8080"), (b"x-a", b"x-a", b"1")]


def test_no_hint_is_sent_to_a_non_mesh_peer_and_a_forged_one_is_not_forwarded() -> None:
    fields = Headers.of([(b"X-A", b"1"), (b"x-sidecar-header-case", b"forged")]).fields
    assert fields_to_h2(fields, to_mesh=False) == [(b"x-a", b"1")]
    assert fields_to_h2(fields, to_mesh=True) == [(b"x-a", b"1"), (HEADER_CASE, b"X-A")]


def test_response_and_trailer_casing_round_trip() -> None:
    headers = Headers.of([(b"X-Legacy-Header", b"Yes"), (b"Transfer-Encoding", b"chunked"), (b"etag", b"1")])
    sent = response_to_h2(200, headers, to_mesh=True)
    assert sent[0] == (b":status", b"200") and (b"transfer-encoding", b"chunked") not in sent
    received = fields_from_h2(sent, from_mesh=True)
    assert received == [(b"x-legacy-header", b"X-Legacy-Header", b"Yes"), (b"etag", b"etag", b"1")]
    trailers = trailers_to_h2(Headers.of([(b"X-Checksum", b"abc")]), to_mesh=True)
    assert fields_from_h2(trailers, from_mesh=True) == [(b"x-checksum", b"X-Checksum", b"abc")]
    assert fields_from_h2(trailers, from_mesh=False) == [(b"x-checksum", b"x-checksum", b"abc")]


def test_host_alone_gives_the_authority_and_connect_has_no_path() -> None:
    head = request_from_h2([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")])
    assert head.authority == b"h" and head.headers.fields == [(b"host", b"host", b"h")]
    connect = request_from_h2([(b":method", b"CONNECT"), (b":authority", b"db:5432")])
    assert (connect.method, connect.authority, connect.path) == (b"CONNECT", b"db:5432", b"/")
    assert connect.headers.fields == [(b"host", b"host", b"db:5432")]


def test_the_last_casing_hint_counts_and_none_is_forwarded() -> None:
    pairs = [*REQUEST, (b"x-a", b"1"), (HEADER_CASE, b"X-A"), (b"x-b", b"2"), (HEADER_CASE, b"X-B")]
    head = request_from_h2(pairs, from_mesh=True)
    assert head.headers.fields == [(b"host", b"host", b"orders:8080"), (b"x-a", b"x-a", b"1"), (b"x-b", b"X-B", b"2")]
