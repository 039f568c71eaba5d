"""sidecar.http.message: Headers multi-map and host_of."""

from __future__ import annotations

import pytest

from sidecar.http.message import BytesBody, ConnectionInfo, EmptyBody, Headers, Request, host_of


def _h() -> Headers:
    return Headers.of([(b"Host", b"a"), (b"X-Multi", b"1"), (b"Accept", b"*/*"), (b"x-multi", b"2")])


def test_of_keeps_raw_and_lowered() -> None:
    assert _h().fields == [
        (b"host", b"Host", b"a"),
        (b"x-multi", b"X-Multi", b"1"),
        (b"accept", b"Accept", b"*/*"),
        (b"x-multi", b"x-multi", b"2"),
    ]


def test_get() -> None:
    headers = _h()
    assert headers.get(b"x-multi") == b"1"
    assert headers.get(b"host") == b"a"
    assert headers.get(b"missing") is None
    assert headers.get(b"missing", b"dflt") == b"dflt"


def test_get_all() -> None:
    headers = _h()
    assert headers.get_all(b"x-multi") == [b"1", b"2"]
    assert headers.get_all(b"accept") == [b"*/*"]
    assert headers.get_all(b"missing") == []


def test_contains_and_len() -> None:
    headers = _h()
    assert b"x-multi" in headers
    assert b"nope" not in headers
    assert len(headers) == 4
    assert len(Headers()) == 0


def test_set_replaces_all_at_first_place_keeping_casing() -> None:
    headers = _h()
    headers.set(b"X-MULTI", b"new")
    assert headers.fields == [
        (b"host", b"Host", b"a"),
        (b"x-multi", b"X-Multi", b"new"),
        (b"accept", b"Accept", b"*/*"),
    ]


def test_set_appends_when_absent() -> None:
    headers = _h()
    headers.set(b"X-New", b"v")
    assert headers.fields[-1] == (b"x-new", b"X-New", b"v")
    assert len(headers) == 5
    assert headers.get(b"x-new") == b"v"


def test_remove() -> None:
    headers = _h()
    headers.remove({b"x-multi", b"host"})
    assert headers.fields == [(b"accept", b"Accept", b"*/*")]
    headers.remove(frozenset({b"absent"}))
    assert headers.fields == [(b"accept", b"Accept", b"*/*")]


def test_add() -> None:
    headers = Headers()
    headers.add(b"X-A", b"1")
    headers.add(b"x-a", b"2")
    assert headers.fields == [(b"x-a", b"X-A", b"1"), (b"x-a", b"x-a", b"2")]
    assert headers.get_all(b"x-a") == [b"1", b"2"]


def test_items_lowercase() -> None:
    assert _h().items() == [(b"host", b"a"), (b"x-multi", b"1"), (b"accept", b"*/*"), (b"x-multi", b"2")]


def test_copy_is_independent() -> None:
    original = _h()
    copy = original.copy()
    copy.add(b"X-Extra", b"e")
    copy.set(b"Host", b"b")
    copy.remove({b"accept"})
    assert original.fields == _h().fields
    assert copy.get(b"host") == b"b"
    assert b"accept" not in copy


def test_default_field_lists_not_shared() -> None:
    a, b = Headers(), Headers()
    a.add(b"X", b"1")
    assert len(b) == 0


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        (b"example.com", "example.com"),
        (b"Example.COM", "example.com"),
        (b"example.com:8080", "example.com"),
        (b"EXAMPLE.com:80", "example.com"),
        (b"example.com.", "example.com"),
        (b"example.com.:443", "example.com"),
        (b"10.0.0.1:15001", "10.0.0.1"),
        (b"[::1]:8080", "[::1]"),
        (b"[::1]", "[::1]"),
        (b"[2001:DB8::1]:443", "[2001:db8::1]"),
        (b" orders ", "orders"),
        (b"orders", "orders"),
    ],
)
def test_host_of(authority: bytes, host: str) -> None:
    assert host_of(authority) == host


def test_request_host_and_path() -> None:
    request = Request(b"GET", b"/a/b?x=1", b"Shop.Example:8080", Headers(), EmptyBody(), ConnectionInfo("1.2.3.4", 5))
    assert request.path == b"/a/b"
    assert request.host == "shop.example"
    no_authority = Request(b"GET", b"/", None, Headers(), EmptyBody(), ConnectionInfo("1.2.3.4", 5))
    assert no_authority.host == ""
    assert no_authority.path == b"/"


async def test_bytes_body_reads_once() -> None:
    body = BytesBody(b"hello")
    assert body.length == 5
    assert await body.read() == b"hello"
    assert await body.read() == b""
    assert await body.read() == b""
