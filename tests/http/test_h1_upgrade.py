"""H1Server's WebSocket path over in-memory streams: which requests are upgrades, the 101 head, and
the tunnel after it (bytes buffered past either head, backpressure, half-close, idle timeout, drain)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from sidecar.http.h1 import parse_response_head
from sidecar.http.message import EMPTY_BODY, BytesBody, Headers, Request, Response
from sidecar.transport.tunnel import UpgradedBody
from sidecar.transport.wire import Wire

from .test_h1_server import Handler, Seen, read_head, read_until_eof, serving

UPGRADE = b"GET /chat HTTP/1.1\r\nHost: orders\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
SWITCHING = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Accept", b"x")]


@dataclass
class App:
    """The upstream end of the tunnel: `stream` is what the app reads and writes; the sidecar side
    starts with `early` already buffered, as if it had arrived with the 101 head."""

    stream: trio.abc.HalfCloseableStream
    proxy_side: trio.StapledStream
    early: bytes = b""
    released: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def release(self) -> None:
        self.released.append(1)
        self.proxy_side.send_stream.close()  # type: ignore[attr-defined]
        self.proxy_side.receive_stream.close()  # type: ignore[attr-defined]


def switching_handler(app: App, idle_timeout: float) -> Callable[[list[Seen]], Handler]:
    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            app.requests.append(request)
            if not request.websocket:
                return Response(200, Headers.of([(b"content-length", b"2")]), BytesBody(b"ok"))
            wire = Wire(app.proxy_side)
            wire.buf += app.early
            return Response(101, Headers.of(SWITCHING), UpgradedBody(wire, app.release, idle_timeout))

        return handle

    return factory


@asynccontextmanager
async def tunnel(
    pair: Callable[[], tuple[trio.StapledStream, trio.StapledStream]] = trio.testing.memory_stream_pair,
    *,
    early_from_app: bytes = b"",
    early_from_client: bytes = b"",
    idle_timeout: float = 60.0,
) -> AsyncIterator[tuple[trio.abc.HalfCloseableStream, App, bytes]]:
    """Serve one connection whose handler answers 101; yield (client stream, app, bytes the client
    received past the 101 head) once the client has read the 101."""
    app_stream, proxy_side = pair()
    app = App(app_stream, proxy_side, early_from_app)
    async with serving(switching_handler(app, idle_timeout), pair=pair) as h:
        await h.client.send_all(UPGRADE + early_from_client)
        buf = bytearray()
        head = parse_response_head(await read_head(h.client, buf))
        assert head.status == 101
        assert [(raw, value) for _, raw, value in head.headers.fields] == SWITCHING  # no close, no framing
        yield h.client, app, bytes(buf)
        with trio.fail_after(5):
            await h.done.wait()  # the connection never carries HTTP again
        assert app.released == [1]


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize(
    ("raw", "websocket"),
    [
        (UPGRADE, True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", False),
        # a body would be read as tunnel bytes: only a bodiless request may switch
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n", True),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\nab",
            False,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", False),
    ],
)
async def test_which_requests_are_websocket_upgrades(raw: bytes, websocket: bool) -> None:
    app_stream, proxy_side = trio.testing.memory_stream_pair()
    app = App(app_stream, proxy_side)
    with trio.fail_after(5):
        async with serving(switching_handler(app, 60.0)) as h:
            await h.client.send_all(raw)
            head = parse_response_head(await read_head(h.client, bytearray()))
            await app.stream.aclose()  # ends the tunnel, when there is one
    assert head.status == (101 if websocket else 200)
    assert [request.websocket for request in app.requests] == [websocket]


async def test_bytes_past_either_head_go_first_then_both_ways_then_half_close() -> None:
    with trio.fail_after(5):
        async with tunnel(early_from_app=b"hello from app", early_from_client=b"hello from client") as (
            client,
            app,
            past_head,
        ):
            past_head += await receive_exactly(client, len(b"hello from app") - len(past_head))
            assert past_head == b"hello from app"
            assert await receive_exactly(app.stream, len(b"hello from client")) == b"hello from client"
            await client.send_all(b"ping")
            assert await receive_exactly(app.stream, 4) == b"ping"
            await app.stream.send_all(b"pong")
            assert await receive_exactly(client, 4) == b"pong"
            await client.send_eof()  # the client is done sending; it still reads
            assert await app.stream.receive_some(10) == b""  # passed on as a half-close
            await app.stream.send_all(b"last words")
            await app.stream.send_eof()
            assert await read_until_eof(client) == b"last words"


async def test_a_slow_reader_stops_the_relay_instead_of_filling_memory() -> None:
    # Lockstep streams buffer nothing: a send completes only when the other side reads it.
    with trio.fail_after(5):
        async with tunnel(trio.testing.lockstep_stream_pair) as (client, app, _):
            sent: list[int] = []

            async def flood() -> None:
                for i in range(3):
                    await client.send_all(b"x" * 1000)
                    sent.append(i)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await trio.testing.wait_all_tasks_blocked()
                # One chunk taken by the relay (stuck sending it to the app), none further read.
                assert sent == [0]
                assert await receive_exactly(app.stream, 3000) == b"x" * 3000
            assert sent == [0, 1, 2]
            await client.send_eof()
            await app.stream.send_eof()


async def test_silence_for_the_idle_timeout_closes_both_sides(autojump_clock: trio.testing.MockClock) -> None:
    async with tunnel(idle_timeout=10.0) as (client, app, _):
        for _ in range(5):  # traffic every 6 s keeps a 10 s idle timeout from firing
            await trio.sleep(6)
            await client.send_all(b".")
            assert await app.stream.receive_some(10) == b"."
        start = trio.current_time()
        assert await client.receive_some(10) == b""
        assert 10 <= trio.current_time() - start <= 11
        assert await app.stream.receive_some(10) == b""


async def test_drain_does_not_cut_an_open_tunnel() -> None:
    with trio.fail_after(5):
        app_stream, proxy_side = trio.testing.memory_stream_pair()
        app = App(app_stream, proxy_side)
        async with serving(switching_handler(app, 60.0)) as h:
            await h.client.send_all(UPGRADE)
            await read_head(h.client, bytearray())
            h.listener.drain()  # closes idle connections: this one is busy
            await trio.testing.wait_all_tasks_blocked()
            await h.client.send_all(b"still here")
            assert await receive_exactly(app.stream, 10) == b"still here"
            await app.stream.send_all(b"yes")
            assert await receive_exactly(h.client, 3) == b"yes"
            await app.stream.send_eof()
            await h.client.send_eof()
            assert await read_until_eof(h.client) == b""  # closed, not kept alive for another request
            await h.done.wait()
        assert app.released == [1]


async def test_a_101_without_an_upgraded_connection_is_refused() -> None:
    def factory(seen: list[Seen]) -> Handler:
        async def handle(request: Request) -> Response:
            return Response(101, Headers.of(SWITCHING), EMPTY_BODY)

        return handle

    with trio.fail_after(5):
        async with serving(factory) as h:
            await h.client.send_all(UPGRADE)
            head = parse_response_head(await read_head(h.client, bytearray()))
            assert head.status == 502
            await h.done.wait()
