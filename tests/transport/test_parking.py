"""sidecar.transport.parking with a real listener and real sockets: an idle HTTP/1.1 keep-alive
connection gives its task up, keeps its place (counted, timed, drained), and is served again when
its client sends the next request. Real time, with a short watchdog tick and park delay."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from sidecar.config.schema import Address
from sidecar.http.message import BytesBody, ConnectionInfo, Headers, Request, Response
from sidecar.transport.h1_server import H1Server, ServerLimits
from sidecar.transport.listener import Listener
from sidecar.transport.tcp import TcpStream
from tests.e2e.conftest import free_port

TICK = 0.02
PARK_AFTER = 0.05
REQUEST = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


async def answer(request: Request) -> Response:
    return Response(200, Headers.of([(b"content-length", b"2")]), BytesBody(b"ok"))


@asynccontextmanager
async def listening(header_read_timeout: float = 30.0) -> AsyncIterator[Listener]:
    listener = Listener("test", Address("127.0.0.1", free_port()))
    listener.tick = TICK
    listener.park_after = PARK_AFTER
    await listener.bind()
    limits = ServerLimits(header_read_timeout=header_read_timeout)

    async def on_connection(stream: TcpStream) -> None:
        peer = stream.getpeername()
        await H1Server(stream, ConnectionInfo(*peer), answer, limits, listener).serve()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.serve, on_connection, nursery)
        yield listener
        nursery.cancel_scope.cancel()


async def exchange(client: trio.SocketStream) -> bytes:
    await client.send_all(REQUEST)
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = await client.receive_some(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


async def parked(listener: Listener, count: int) -> None:
    with trio.fail_after(5):
        while len(listener.idle_connections) != count:
            await trio.sleep(TICK)


async def closed(client: trio.SocketStream) -> None:
    with trio.fail_after(5):
        assert await client.receive_some(100) == b""


async def test_an_idle_connection_parks_and_is_served_again_on_its_next_request() -> None:
    async with listening() as listener:
        client = await trio.open_tcp_stream("127.0.0.1", listener.bound_port)
        async with client:
            assert (await exchange(client)).startswith(b"HTTP/1.1 200 OK\r\n")
            for _ in range(3):  # parks again after each request
                await parked(listener, 1)
                assert listener.connections == 1  # parked, still open
                assert (await exchange(client)).startswith(b"HTTP/1.1 200 OK\r\n")
            assert listener.accepted == 1


async def test_a_busy_connection_is_never_parked() -> None:
    async with listening() as listener:
        client = await trio.open_tcp_stream("127.0.0.1", listener.bound_port)
        async with client:
            with trio.move_on_after(PARK_AFTER * 6):
                while True:
                    await exchange(client)
                    assert len(listener.idle_connections) == 0
                    await trio.sleep(PARK_AFTER / 5)


async def test_a_parked_connection_whose_client_leaves_is_closed_and_counted_down() -> None:
    async with listening() as listener:
        client = await trio.open_tcp_stream("127.0.0.1", listener.bound_port)
        await exchange(client)
        await parked(listener, 1)
        await client.aclose()
        with trio.fail_after(5):
            while listener.connections:
                await trio.sleep(TICK)
        assert len(listener.idle_connections) == 0 and not listener.timers


async def test_a_parked_connection_ends_at_its_keep_alive_deadline() -> None:
    timeout = 0.3
    async with listening(header_read_timeout=timeout) as listener:
        client = await trio.open_tcp_stream("127.0.0.1", listener.bound_port)
        async with client:
            await exchange(client)
            start = trio.current_time()
            await parked(listener, 1)
            await closed(client)
            assert timeout <= trio.current_time() - start < timeout + 1.0
            assert listener.connections == 0 and len(listener.idle_connections) == 0


async def test_a_drain_closes_parked_connections_but_serves_one_whose_request_came() -> None:
    async with listening() as listener:
        quiet = await trio.open_tcp_stream("127.0.0.1", listener.bound_port)
        waiting = await trio.open_tcp_stream("127.0.0.1", listener.bound_port)
        async with quiet, waiting:
            await exchange(quiet)
            await exchange(waiting)
            await parked(listener, 2)
            # The next request arrives while parked, and the drain looks before any task runs.
            raw = waiting.socket.fileno()
            assert os.write(raw, REQUEST) == len(REQUEST)
            listener.drain()
            await closed(quiet)
            data = b""
            with trio.fail_after(5):
                while chunk := await waiting.receive_some(65536):
                    data += chunk
            assert data == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            with trio.fail_after(5):
                await listener.wait_quiet()
