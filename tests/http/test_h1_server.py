"""sidecar.transport.h1_server.H1Server over in-memory streams: framing, keep-alive, limits, timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.testing

from sidecar.config.schema import Address
from sidecar.http.errors import DownstreamGone, NoRoute, UpstreamTimeout
from sidecar.http.h1 import UNTIL_CLOSE, parse_response_head, response_body_length
from sidecar.http.message import EMPTY_BODY, BytesBody, ConnectionInfo, Headers, Request, Response
from sidecar.transport.h1_server import H1Server, ServerLimits
from sidecar.transport.listener import Listener

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Seen:
    """What the handler saw of one request (the body as read by the handler, if it read it)."""

    method: bytes
    target: bytes
    authority: bytes | None
    headers: list[tuple[bytes, bytes]]
    http_version: str
    body: bytes | None = None
    trailers: list[tuple[bytes, bytes]] | None = None


@dataclass
class Harness:
    client: trio.StapledStream
    listener: Listener
    done: trio.Event
    seen: list[Seen] = field(default_factory=list)
    escaped: list[BaseException] = field(default_factory=list)  # what serve() let out (must stay empty)


def ok_handler(seen: list[Seen], *, read_body: bool = True, body: bytes = b"hello") -> Handler:
    async def handle(request: Request) -> Response:
        record = Seen(
            request.method,
            request.target,
            request.authority,
            [(raw, value) for _, raw, value in request.headers.fields],
            request.http_version,
        )
        seen.append(record)
        if read_body:
            data = b""
            while chunk := await request.body.read():
                data += chunk
            record.body = data
            trailers = request.body.trailers
            record.trailers = trailers.items() if trailers else None
        return Response(200, Headers.of([(b"Content-Type", b"text/plain")]), BytesBody(body))

    return handle


@asynccontextmanager
async def serving(
    handler_factory: Callable[[list[Seen]], Handler] = ok_handler,
    limits: ServerLimits | None = None,
    listener: Listener | None = None,
    pair: Callable[[], tuple[trio.StapledStream, trio.StapledStream]] = trio.testing.memory_stream_pair,
) -> AsyncIterator[Harness]:
    client, server_stream = pair()
    listener = listener or Listener("test", Address("127.0.0.1", 15001))
    seen: list[Seen] = []
    done = trio.Event()
    server = H1Server(
        server_stream, ConnectionInfo("10.0.0.9", 5555), handler_factory(seen), limits or ServerLimits(), listener
    )

    async def run() -> None:
        try:
            await server.serve()
        except Exception as exc:  # recorded, so a test can say what escaped; checked on exit
            harness.escaped.append(exc)
        finally:
            await trio.aclose_forcefully(server_stream)
            done.set()

    async def no_connections(stream: object) -> None:
        raise AssertionError("the test listener has no sockets")

    harness = Harness(client, listener, done, seen)
    async with trio.open_nursery() as nursery:
        # A listener without sockets: serve() only starts its per-listener machinery (the header
        # read watchdog) in `nursery`, as the sidecar does, and returns.
        await listener.serve(no_connections, nursery)
        nursery.start_soon(run)
        yield harness
        await client.aclose()
        await done.wait()
        nursery.cancel_scope.cancel()
    assert harness.escaped == [], f"serve() raised {harness.escaped!r}"


async def read_until_eof(stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def read_head(stream, buf: bytearray) -> bytes:
    """Receive until a full response head is in `buf`; return it (without blank line) and keep the rest."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed before a full head; got {bytes(buf)!r}"
        buf += chunk
    head = bytes(buf[:end])
    del buf[: end + 4]
    return head


async def h11_response(stream, conn: h11.Connection) -> tuple[h11.Response, bytes, list]:
    response = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, body, list(event.headers)
        else:
            raise AssertionError(f"unexpected event {event!r}")


async def h11_request(stream, conn: h11.Connection, *events) -> tuple[h11.Response, bytes, list]:
    await stream.send_all(b"".join(conn.send(event) for event in events))
    return await h11_response(stream, conn)


def header(response: h11.Response, name: bytes) -> list[bytes]:
    return [value for n, value in response.headers if n == name]


GET = h11.Request(method="GET", target="/path?q=1", headers=[("Host", "orders"), ("X-Custom-Case", "v")])


# --------------------------------------------------------------------------------------------------
# Basic exchanges
# --------------------------------------------------------------------------------------------------


async def test_get_gets_response() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            conn = h11.Connection(h11.CLIENT)
            response, body, _ = await h11_request(h.client, conn, GET, h11.EndOfMessage())
            assert response.status_code == 200
            assert body == b"hello"
            assert header(response, b"content-length") == [b"5"]
            assert header(response, b"content-type") == [b"text/plain"]
            assert header(response, b"connection") == []
            assert len(h.seen) == 1
            seen = h.seen[0]
            assert (seen.method, seen.target, seen.authority, seen.http_version) == (
                b"GET",
                b"/path?q=1",
                b"orders",
                "1.1",
            )
            assert seen.headers == [(b"Host", b"orders"), (b"X-Custom-Case", b"v")]
            assert seen.body == b""


async def test_keep_alive_serves_two_requests_on_one_stream() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            conn = h11.Connection(h11.CLIENT)
            first, body1, _ = await h11_request(h.client, conn, GET, h11.EndOfMessage())
            conn.start_next_cycle()
            second_request = h11.Request(
                method="POST", target="/two", headers=[("Host", "orders"), ("Content-Length", "3")]
            )
            second, body2, _ = await h11_request(
                h.client, conn, second_request, h11.Data(data=b"abc"), h11.EndOfMessage()
            )
            assert (first.status_code, body1, second.status_code, body2) == (200, b"hello", 200, b"hello")
            assert [s.target for s in h.seen] == [b"/path?q=1", b"/two"]
            assert h.seen[1].body == b"abc"
            assert not h.done.is_set()


async def test_pipelined_requests_answered_in_order() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(
                b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nxy"
                b"GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            data = await read_until_eof(h.client)
            assert data.count(b"HTTP/1.1 200 OK\r\n") == 3
            assert [s.target for s in h.seen] == [b"/1", b"/2", b"/3"]
            assert [s.body for s in h.seen] == [b"", b"xy", b""]


async def test_body_read_from_stream_never_overreads_into_next_request() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()  # the head is parsed; the body is read off the stream
            await h.client.send_all(b"abcdGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = await read_until_eof(h.client)
            assert data.count(b"HTTP/1.1 200 OK") == 2
            assert [(s.target, s.body) for s in h.seen] == [(b"/1", b"abcd"), (b"/2", b"")]


async def test_client_gone_mid_body_ends_connection_without_reply() -> None:
    errors: list[BaseException] = []

    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            try:
                while await request.body.read():
                    pass
            except BaseException as exc:
                errors.append(exc)
                raise
            return Response(200, Headers(), BytesBody(b"unexpected"))

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            await h.client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
            await h.client.send_stream.aclose()
            assert await read_until_eof(h.client) == b""
            await h.done.wait()
            assert len(errors) == 1
            assert isinstance(errors[0], DownstreamGone)
            # A client that hangs up is routine: serve() must end quietly, not raise (in the sidecar an
            # exception out of serve() would tear down the nursery every connection runs in).
            assert h.escaped == []


class Endless:
    """A streamed response body that never ends (one chunk per read)."""

    length = None
    trailers = None

    def __init__(self) -> None:
        self.closed = False

    async def read(self) -> bytes:
        await trio.sleep(0.01)
        return b"x" * 100

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", id="without-body"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok", id="with-body"),
    ],
)
async def test_client_gone_while_response_streams_ends_quietly(request_bytes: bytes) -> None:
    bodies: list[Endless] = []

    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            while await request.body.read():
                pass
            bodies.append(Endless())
            return Response(200, Headers(), bodies[-1])

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            await h.client.send_all(request_bytes)
            await read_head(h.client, bytearray())
            await h.client.aclose()  # the client hangs up mid-response
            await h.done.wait()
            assert bodies[0].closed
            assert h.escaped == []


@pytest.mark.parametrize(
    ("target", "path", "authority"),
    [
        (b"http://orders/x?y=1", b"/x?y=1", b"orders"),
        (b"HTTP://Orders:8080", b"/", b"Orders:8080"),
        (b"http://orders?q=1", b"/?q=1", b"orders"),
        (b"https://[::1]:15001/p", b"/p", b"[::1]:15001"),
    ],
)
async def test_absolute_form_variants(target: bytes, path: bytes, authority: bytes) -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(b"GET " + target + b" HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")
            assert (await read_until_eof(h.client)).startswith(b"HTTP/1.1 200 OK")
            assert (h.seen[0].target, h.seen[0].authority) == (path, authority)
            assert [v for n, v in h.seen[0].headers if n.lower() == b"host"] == [authority]


async def test_leading_empty_lines_ignored() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = await read_until_eof(h.client)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert len(h.seen) == 1


async def test_connection_close_closes_after_response() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = await read_until_eof(h.client)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
            assert b"connection: close" in head.lower().split(b"\r\n")
            assert body == b"hello"
            await h.done.wait()


async def test_http10_closes_by_default_and_keeps_alive_on_request() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(b"GET /a HTTP/1.0\r\n\r\n")
            data = await read_until_eof(h.client)
            assert data == (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
            )
            assert h.seen[0].http_version == "1.0"
            assert h.seen[0].authority is None
        async with serving() as h:
            await h.client.send_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            buf = bytearray()
            head = await read_head(h.client, buf)
            assert b"connection: keep-alive" in head.split(b"\r\n")
            await h.client.send_all(b"GET /b HTTP/1.0\r\n\r\n")
            rest = await read_until_eof(h.client)
            assert (bytes(buf) + rest).count(b"HTTP/1.1 200 OK") == 1
            assert [s.target for s in h.seen] == [b"/a", b"/b"]


async def test_absolute_form_target() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(method="GET", target="http://Orders:8080/x?y=1", headers=[("Host", "ignored")])
            response, _, _ = await h11_request(h.client, conn, request, h11.EndOfMessage())
            assert response.status_code == 200
            seen = h.seen[0]
            assert (seen.target, seen.authority) == (b"/x?y=1", b"Orders:8080")
            assert seen.headers == [(b"Host", b"Orders:8080")]


async def test_chunked_request_body_and_trailers_reach_handler() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(
                b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"
                b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            data = await read_until_eof(h.client)
            assert data.count(b"HTTP/1.1 200 OK") == 2
            assert h.seen[0].body == b"hello world"
            assert h.seen[0].trailers == [(b"x-sum", b"11")]
            assert h.seen[1].target == b"/after"


async def test_streamed_response_without_length_is_chunked_with_trailers() -> None:
    class Streamed:
        length = None

        def __init__(self) -> None:
            self.parts = [b"one", b"two", b"three"]
            self.trailers = None
            self.closed = False

        async def read(self) -> bytes:
            if self.parts:
                return self.parts.pop(0)
            self.trailers = Headers.of([(b"Grpc-Status", b"0")])
            return b""

        async def aclose(self) -> None:
            self.closed = True

    bodies: list[Streamed] = []

    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            body = Streamed()
            bodies.append(body)
            return Response(200, Headers.of([(b"Content-Length", b"99")]), body)

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            conn = h11.Connection(h11.CLIENT)
            response, body, trailers = await h11_request(h.client, conn, GET, h11.EndOfMessage())
            assert header(response, b"transfer-encoding") == [b"chunked"]
            assert header(response, b"content-length") == []
            assert body == b"onetwothree"
            assert trailers == [(b"grpc-status", b"0")]
            assert bodies[0].closed


async def test_streamed_response_to_http10_is_delimited_by_close() -> None:
    class Streamed:
        length = None
        trailers = None

        def __init__(self) -> None:
            self.parts = [b"ab", b"cd"]

        async def read(self) -> bytes:
            return self.parts.pop(0) if self.parts else b""

        async def aclose(self) -> None:
            pass

    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            return Response(200, Headers.of([(b"X-A", b"1")]), Streamed())

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            await h.client.send_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            data = await read_until_eof(h.client)
            assert data == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nconnection: close\r\n\r\nabcd"


async def test_empty_200_response_is_delimited() -> None:
    """A handler's 200 with no body and no Content-Length must still end on the wire."""

    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            seen.append(Seen(request.method, request.target, request.authority, [], request.http_version))
            return Response(200, Headers.of([(b"X-Empty", b"1")]), EMPTY_BODY)

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            await h.client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await read_head(h.client, bytearray())
            framing = response_body_length(parse_response_head(head), b"GET")
            assert framing != UNTIL_CLOSE, f"empty response is read until close: {head!r}"
            assert framing == 0


async def test_204_has_no_body_and_keeps_alive() -> None:
    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            seen.append(Seen(request.method, request.target, request.authority, [], request.http_version))
            return Response(204, Headers.of([(b"X-A", b"1")]), BytesBody(b"must not be sent"))

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            await h.client.send_all(
                b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            data = await read_until_eof(h.client)
            assert data == (
                b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
                b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nconnection: close\r\n\r\n"
            )


async def test_head_response_has_no_body() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(
                b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            data = await read_until_eof(h.client)
            # The HEAD reply describes the body (content-length: 5) but carries none: the next reply follows.
            assert data == (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
            )
            assert [s.method for s in h.seen] == [b"HEAD", b"GET"]


async def test_head_response_keeps_handler_content_length() -> None:
    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            return Response(200, Headers.of([(b"Content-Length", b"1234")]), EMPTY_BODY)

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            await h.client.send_all(b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = await read_until_eof(h.client)
            assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nconnection: close\r\n\r\n"


# --------------------------------------------------------------------------------------------------
# Errors answered by the server itself
# --------------------------------------------------------------------------------------------------


async def expect_local_reply(request: bytes, status: int, reason: bytes, limits: ServerLimits | None = None) -> Harness:
    with trio.fail_after(5):
        async with serving(limits=limits) as h:
            await h.client.send_all(request)
            data = await read_until_eof(h.client)  # the server closes the connection
            await h.done.wait()  # serve() returned: the server ended the connection
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            assert lines[0].startswith(b"HTTP/1.1 %d " % status), data
            fields = [line.split(b": ", 1) for line in lines[1:]]
            assert [b"x-sidecar-reason", reason] in fields
            assert [b"connection", b"close"] in fields
            assert [b"content-length", str(len(body)).encode()] in fields
            assert body.endswith(b"\n") and len(body) > 1
            assert h.seen == []
        return h


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", id="HTTP/2.0"),
        pytest.param(b"GET /\r\nHost: a\r\n\r\n", id="no-version"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", id="control-char"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="missing-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET relative HTTP/1.1\r\nHost: a\r\n\r\n", id="bad-target"),
        pytest.param(b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", id="absolute-without-host"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="CL+TE",
        ),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", id="CL-CL"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", id="TE-gzip"),
        pytest.param(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="TE-in-1.0"),
    ],
)
async def test_malformed_request_gets_400_and_close(request_bytes: bytes) -> None:
    await expect_local_reply(request_bytes, 400, b"bad_request")


async def test_malformed_second_request_on_keep_alive() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost : a\r\n\r\n")
            data = await read_until_eof(h.client)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"HTTP/1.1 400 Bad Request\r\n" in data
            assert [s.target for s in h.seen] == [b"/1"]


async def test_headers_over_limit_get_431() -> None:
    limits = ServerLimits(max_request_headers=1024)
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n"
    await expect_local_reply(big, 431, b"too_large", limits)


async def test_headers_over_limit_without_end_get_431() -> None:
    limits = ServerLimits(max_request_headers=1024)
    endless = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: yyyyyyyyyy\r\n" * 200
    await expect_local_reply(endless, 431, b"too_large", limits)


async def test_headers_just_under_limit_accepted() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Pad: "
    pad = 1000 - len(head) - 2
    request = head + b"p" * pad + b"\r\n\r\n"
    with trio.fail_after(5):
        async with serving(limits=ServerLimits(max_request_headers=1000)) as h:
            await h.client.send_all(request)
            assert (await read_until_eof(h.client)).startswith(b"HTTP/1.1 200 OK")


async def test_content_length_over_body_limit_gets_413_before_handler() -> None:
    limits = ServerLimits(max_request_body=100)
    request = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n" + b"z" * 101
    await expect_local_reply(request, 413, b"too_large", limits)


async def test_content_length_at_body_limit_accepted() -> None:
    with trio.fail_after(5):
        async with serving(limits=ServerLimits(max_request_body=100)) as h:
            await h.client.send_all(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + b"z" * 100
            )
            assert (await read_until_eof(h.client)).startswith(b"HTTP/1.1 200 OK")
            assert h.seen[0].body == b"z" * 100


async def test_chunked_body_crossing_limit_gets_413() -> None:
    with trio.fail_after(5):
        async with serving(limits=ServerLimits(max_request_body=10)) as h:
            await h.client.send_all(
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
            )
            data = await read_until_eof(h.client)
            assert data.startswith(b"HTTP/1.1 413 ")
            assert b"x-sidecar-reason: too_large\r\n" in data


async def test_handler_proxy_error_becomes_local_reply() -> None:
    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            raise NoRoute(detail="host 'secret.internal'")

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            conn = h11.Connection(h11.CLIENT)
            response, body, _ = await h11_request(h.client, conn, GET, h11.EndOfMessage())
            assert response.status_code == 404
            assert header(response, b"x-sidecar-reason") == [b"no_route"]
            assert body == b"no service or route matches this host\n"
            # A handler's error reply does not cost the connection.
            conn.start_next_cycle()
            response2, _, _ = await h11_request(h.client, conn, GET, h11.EndOfMessage())
            assert response2.status_code == 404


async def test_handler_crash_becomes_500_without_stack_trace() -> None:
    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            raise RuntimeError("boom at 10.1.1.1")

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            conn = h11.Connection(h11.CLIENT)
            response, body, _ = await h11_request(h.client, conn, GET, h11.EndOfMessage())
            assert response.status_code == 500
            assert body == b"internal error\n"
            assert b"boom" not in body and b"Traceback" not in body


async def test_unread_body_response_announces_close() -> None:
    """The server closes when the handler left the body unread; its response must say so (RFC 9112 §9.6),
    or a keep-alive client sends its next request into a closing connection."""
    with trio.fail_after(5):
        async with serving(lambda seen: ok_handler(seen, read_body=False)) as h:
            await h.client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
            data = await read_until_eof(h.client)
            await h.done.wait()
            head = data.partition(b"\r\n\r\n")[0]
            assert b"connection: close" in head.lower().split(b"\r\n"), data


async def test_unread_body_is_not_parsed_as_a_request() -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    with trio.fail_after(5):
        async with serving(lambda seen: ok_handler(seen, read_body=False)) as h:
            await h.client.send_all(
                b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled
            )
            data = await read_until_eof(h.client)
            assert data.count(b"HTTP/1.1 ") == 1
            assert [s.target for s in h.seen] == [b"/upload"]


# --------------------------------------------------------------------------------------------------
# Expect: 100-continue
# --------------------------------------------------------------------------------------------------


async def test_expect_continue_sent_when_handler_reads_body() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            buf = bytearray()
            interim = await read_head(h.client, buf)
            assert interim == b"HTTP/1.1 100 Continue"
            assert buf == b""
            await h.client.send_all(b"abcde")
            data = await read_until_eof(h.client)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert h.seen[0].body == b"abcde"
            # The hop-by-hop expectation is answered here, not forwarded.
            assert all(name.lower() != b"expect" for name, _ in h.seen[0].headers)


async def test_expect_continue_not_sent_when_handler_ignores_body() -> None:
    with trio.fail_after(5):
        async with serving(lambda seen: ok_handler(seen, read_body=False)) as h:
            await h.client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            data = await read_until_eof(h.client)  # body never sent: the server answers and closes
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"100 Continue" not in data
            await h.done.wait()  # the unsent body cannot be skipped: the connection ends


async def test_expect_continue_not_sent_for_http10() -> None:
    with trio.fail_after(5):
        async with serving() as h:
            await h.client.send_all(b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok")
            data = await read_until_eof(h.client)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"100 Continue" not in data
            assert h.seen[0].body == b"ok"


# --------------------------------------------------------------------------------------------------
# header_read_timeout and drain (MockClock)
# --------------------------------------------------------------------------------------------------

TIMEOUT = 5.0
TICK = 0.1  # the listener's watchdog period: timeouts are precise to one tick


def timed_listener() -> Listener:
    listener = Listener("test", Address("127.0.0.1", 15001))
    listener.tick = TICK
    return listener


async def test_stalled_half_head_disconnected_after_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=ServerLimits(header_read_timeout=TIMEOUT), listener=timed_listener()) as h:
        start = trio.current_time()
        await h.client.send_all(b"GET / HTTP/1.1\r\nHo")
        data = await read_until_eof(h.client)
        elapsed = trio.current_time() - start
        assert data == b""
        assert TIMEOUT <= elapsed <= TIMEOUT + TICK + 1e-9
        assert h.seen == []


async def test_slow_drip_head_cut_at_timeout_not_extended(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=ServerLimits(header_read_timeout=TIMEOUT), listener=timed_listener()) as h:
        start = trio.current_time()
        closed_at: list[float] = []
        closed = trio.Event()

        async def watch() -> None:
            await read_until_eof(h.client)
            closed_at.append(trio.current_time() - start)
            closed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for byte in b"GET / HTTP/1.1\r\nHost: a\r\n":  # one byte a second, never finishing the head
                try:
                    await h.client.send_all(bytes([byte]))
                except trio.BrokenResourceError:  # the server hung up: stop dripping
                    break
                await trio.sleep(1)
            with trio.move_on_after(2 * TIMEOUT):
                await closed.wait()
            nursery.cancel_scope.cancel()
        assert closed_at, "the server never cut off the slow client"
        assert TIMEOUT <= closed_at[0] <= TIMEOUT + TICK + 1e-9
        assert h.seen == []


async def test_head_completed_in_time_is_served(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=ServerLimits(header_read_timeout=TIMEOUT), listener=timed_listener()) as h:
        await h.client.send_all(b"GET / HTTP/1.1\r\n")
        await trio.sleep(TIMEOUT - 1)
        await h.client.send_all(b"Host: a\r\nConnection: close\r\n\r\n")
        assert (await read_until_eof(h.client)).startswith(b"HTTP/1.1 200 OK")


async def test_idle_keep_alive_connection_closed_after_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=ServerLimits(header_read_timeout=TIMEOUT), listener=timed_listener()) as h:
        conn = h11.Connection(h11.CLIENT)
        response, _, _ = await h11_request(h.client, conn, GET, h11.EndOfMessage())
        assert response.status_code == 200
        after_response = trio.current_time()
        assert await read_until_eof(h.client) == b""
        elapsed = trio.current_time() - after_response
        assert TIMEOUT <= elapsed <= TIMEOUT + TICK + 1e-9
        await h.done.wait()


async def test_body_read_not_bounded_by_header_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=ServerLimits(header_read_timeout=TIMEOUT), listener=timed_listener()) as h:
        await h.client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab")
        await trio.sleep(TIMEOUT * 3)
        await h.client.send_all(b"cd")
        assert (await read_until_eof(h.client)).startswith(b"HTTP/1.1 200 OK")
        assert h.seen[0].body == b"abcd"


async def test_drain_closes_idle_connection_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=ServerLimits(header_read_timeout=TIMEOUT), listener=timed_listener()) as h:
        conn = h11.Connection(h11.CLIENT)
        await h11_request(h.client, conn, GET, h11.EndOfMessage())
        await trio.sleep(0.5)
        start = trio.current_time()
        h.listener.drain()
        assert await read_until_eof(h.client) == b""
        assert trio.current_time() - start < 0.01  # at once, not at the next watchdog tick or timeout
        await h.done.wait()


async def test_drain_lets_a_partly_received_head_finish(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=ServerLimits(header_read_timeout=TIMEOUT), listener=timed_listener()) as h:
        await h.client.send_all(b"GET / HTTP/1.1\r\n")
        await trio.sleep(0.5)
        h.listener.drain()
        await trio.sleep(1)
        await h.client.send_all(b"Host: a\r\n\r\n")
        data = await read_until_eof(h.client)
        assert (
            data
            == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        )


async def test_draining_response_says_connection_close(autojump_clock: trio.testing.MockClock) -> None:
    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            listener.drain()  # drain starts while the request is in flight
            return Response(200, Headers.of([(b"Content-Length", b"2")]), BytesBody(b"ok"))

        return handle

    listener = Listener("test", Address("127.0.0.1", 15001))
    async with serving(factory, listener=listener) as h:
        await h.client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await read_until_eof(h.client)
        assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok"


async def test_upstream_error_while_reading_first_body_chunk_becomes_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class FailingBody:
        length = None
        trailers = None

        async def read(self) -> bytes:
            raise UpstreamTimeout()

        async def aclose(self) -> None:
            pass

    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            return Response(200, Headers(), FailingBody())

        return handle

    async with serving(factory) as h:
        await h.client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await read_until_eof(h.client)
        assert data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
        assert b"x-sidecar-reason: upstream_timeout\r\n" in data
