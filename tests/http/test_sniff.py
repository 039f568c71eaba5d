"""sidecar.http.sniff: what a connection speaks from its first bytes (HTTP/2 preface, an HTTP/1.x
request line, or opaque TCP), and "not yet" (None) while a prefix could still be either."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.sniff import H2_PREFACE, MAX_METHOD, Speaks, sniff

MAX_LINE = 8192


def test_nothing_yet_is_not_yet() -> None:
    assert sniff(b"", MAX_LINE) is None


def test_the_h2_preface_complete_is_http2_with_or_without_frames_after_it() -> None:
    assert sniff(H2_PREFACE, MAX_LINE) is Speaks.HTTP2
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    assert sniff(H2_PREFACE + settings, MAX_LINE) is Speaks.HTTP2


@pytest.mark.parametrize("size", range(1, len(H2_PREFACE)))
def test_any_prefix_of_the_h2_preface_is_not_yet(size: int) -> None:
    assert sniff(H2_PREFACE[:size], MAX_LINE) is None


def test_a_preface_that_goes_wrong_after_its_first_line_is_not_http() -> None:
    assert sniff(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", MAX_LINE) is Speaks.TCP
    assert sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[:16] + b"junk", MAX_LINE) is Speaks.TCP


@pytest.mark.parametrize(
    "line",
    [
        b"GET / HTTP/1.1\r\n",
        b"GET /a/b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /submit HTTP/1.0\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n",
        b"DELETE http://example.com/x HTTP/1.1\r\n",
        b"M-SEARCH * HTTP/1.1\r\n",  # any token is a method
        b"PRI / HTTP/1.1\r\n",  # starts like the h2 preface, then is not it
    ],
)
def test_request_lines_are_http1(line: bytes) -> None:
    assert sniff(line, MAX_LINE) is Speaks.HTTP1


def test_a_bare_lf_request_line_is_http1_for_the_http1_server_to_judge() -> None:
    assert sniff(b"GET / HTTP/1.1\n", MAX_LINE) is Speaks.HTTP1
    assert sniff(b"GET / HTTP/1.0\nHost: a\n\n", MAX_LINE) is Speaks.HTTP1


@pytest.mark.parametrize(
    "line",
    [
        b"GET / HTTP/2.0\r\n",
        b"GET / HTTP/1.2\r\n",
        b"GET / HTTP/1.10\r\n",
        b"GET / HTTP/1\r\n",
        b"GET / http/1.1\r\n",
        b"GET /\r\n",  # HTTP/0.9
        b"GET  / HTTP/1.1\r\n",  # two spaces
        b"GET / HTTP/1.1 \r\n",  # trailing space
        b"GET /a b HTTP/1.1\r\n",  # a space in the target
        b"GET /\x01 HTTP/1.1\r\n",  # a control in the target
        b"G(T / HTTP/1.1\r\n",  # not a token
        b" GET / HTTP/1.1\r\n",
        b"\r\n",
        b"\n",
        b"hello world\n",
    ],
)
def test_lines_that_are_not_request_lines_are_tcp(line: bytes) -> None:
    assert sniff(line, MAX_LINE) is Speaks.TCP


def test_a_tls_client_hello_is_tcp_at_its_first_byte() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))
    assert sniff(hello[:1], MAX_LINE) is Speaks.TCP
    assert sniff(hello, MAX_LINE) is Speaks.TCP


@pytest.mark.parametrize(
    "command",
    [
        b"*1\r\n$4\r\nPING\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
        b"PING\r\n",  # an inline command
        b"SET key value\r\n",  # inline, three words: still not a request line
        b"+OK\r\n",
    ],
)
def test_redis_commands_are_tcp(command: bytes) -> None:
    assert sniff(command, MAX_LINE) is Speaks.TCP


def test_postgresql_startup_and_ssl_request_are_tcp_at_their_first_bytes() -> None:
    ssl_request = struct.pack("!II", 8, 80877103)
    params = b"user\x00app\x00database\x00app\x00\x00"
    startup = struct.pack("!II", 8 + len(params), 196608) + params
    for message in (ssl_request, startup):
        assert sniff(message[:1], MAX_LINE) is Speaks.TCP
        assert sniff(message, MAX_LINE) is Speaks.TCP


@pytest.mark.parametrize(
    "prefix",
    [
        b"G",
        b"GET",
        b"GET ",
        b"GET /",
        b"GET /index.html",
        b"GET / ",
        b"GET / H",
        b"GET / HTTP",
        b"GET / HTTP/",
        b"GET / HTTP/1",
        b"GET / HTTP/1.",
        b"GET / HTTP/1.1",
        b"GET / HTTP/1.1\r",
        b"POST /x HTTP/1.0\r",
        b"*1",  # `*` is a token character: a Redis command needs its line end to tell
        b"x" * MAX_METHOD,
    ],
)
def test_a_partial_request_line_is_not_yet(prefix: bytes) -> None:
    assert sniff(prefix, MAX_LINE) is None


@pytest.mark.parametrize(
    "prefix",
    [
        b"GET / X",
        b"GET / HTTP/2",
        b"GET / HTTP/1.2",
        b"GET / HTTP/1.1x",
        b"GET / HTTP/1.1\rx",
        b"GET  ",
        b"\x00",
        b"G\x00",
    ],
)
def test_a_partial_line_that_cannot_become_a_request_line_is_tcp_at_once(prefix: bytes) -> None:
    assert sniff(prefix, MAX_LINE) is Speaks.TCP


def test_a_method_longer_than_32_is_not_http() -> None:
    assert MAX_METHOD == 32
    assert sniff(b"A" * 32 + b" / HTTP/1.1\r\n", MAX_LINE) is Speaks.HTTP1
    assert sniff(b"A" * 33 + b" / HTTP/1.1\r\n", MAX_LINE) is Speaks.TCP
    assert sniff(b"A" * 33, MAX_LINE) is Speaks.TCP  # no need to wait for the rest
    assert sniff(b"A" * 33 + b" /", MAX_LINE) is Speaks.TCP


def test_a_first_line_longer_than_max_line_is_tcp() -> None:
    target = b"/" + b"a" * 200
    line = b"GET " + target + b" HTTP/1.1\r\n"
    assert sniff(line, len(line)) is Speaks.HTTP1  # its end within max_line
    assert sniff(line[:-2], len(line) + 10) is None  # not there yet, and room left
    assert sniff(line[:100], 100) is Speaks.TCP  # max_line bytes and no end: not HTTP
    assert sniff(line, 100) is Speaks.TCP  # the end comes past max_line
    assert sniff(b"GET /" + b"a" * (MAX_LINE * 2), MAX_LINE) is Speaks.TCP


def test_the_verdict_depends_only_on_the_first_line() -> None:
    assert sniff(b"GET / HTTP/1.1\r\n\x00\x01\x02 binary after it", MAX_LINE) is Speaks.HTTP1
    assert sniff(b"*1\r\nGET / HTTP/1.1\r\n", MAX_LINE) is Speaks.TCP


REQUEST = b"PUT /orders/1?x=y HTTP/1.1\r\nHost: orders\r\n\r\n"


@given(st.integers(min_value=1, max_value=len(REQUEST)))
def test_every_prefix_of_a_request_is_not_yet_or_http1_never_tcp(size: int) -> None:
    verdict = sniff(REQUEST[:size], MAX_LINE)
    assert verdict in (None, Speaks.HTTP1)
    if b"\n" in REQUEST[:size]:
        assert verdict is Speaks.HTTP1


@given(st.binary(min_size=1, max_size=300))
def test_any_bytes_get_a_verdict_or_not_yet_and_more_bytes_never_undo_a_verdict(data: bytes) -> None:
    verdict = sniff(data, 256)
    if verdict is not None:
        assert sniff(data + b"more\r\n", 256) is verdict
