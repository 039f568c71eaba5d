"""sidecar.transport.h2_client.H2ClientConnection over in-memory streams: against a raw HTTP/2 server,
what an upstream that misbehaves can make the client hold stays bounded; against h2's own server
state machine, a request body that fails ends its stream at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import trio
import trio.testing

from sidecar.http.errors import BadRequest, BodyTooLarge
from sidecar.http.message import ConnectionInfo, Headers, Request
from sidecar.transport.h2_client import HIGH_WATER, H2ClientConnection
from sidecar.transport.wire import RECEIVE_SIZE
from tests.http.h2_frames import ping, settings


class FakePool:
    """What the connection asks of its owner (`H2ClientOwner`), as the pool would answer."""

    stream_idle_timeout = None

    def __init__(self) -> None:
        self.closed = False

    def stream_done(self, conn: object) -> None:
        pass

    def connection_closed(self, conn: object) -> None:
        self.closed = True


async def test_acks_of_a_ping_flood_are_bounded_when_the_upstream_does_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader reads again only once its backlog is written: an upstream that sends PINGs and
    never reads gets about one read's worth of ACKs queued, then no more is read from it."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    conn = H2ClientConnection(ours, FakePool(), secure=False, mesh_peer=False)
    sent = 0
    largest = 0

    async def upstream() -> None:
        nonlocal sent
        await theirs.receive_some(65536)  # the preface and SETTINGS; then never read again
        await theirs.send_all(settings())
        flood = ping() * 1000  # 17 KB
        while sent < 50_000:
            await theirs.send_all(flood)
            sent += 1000

    async def watch() -> None:
        nonlocal largest
        while True:
            largest = max(largest, conn._backlog.size)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.start, nursery)
        nursery.start_soon(watch)
        with trio.move_on_after(20):
            await upstream()
        nursery.cancel_scope.cancel()
    # The writer's first write never completes; the reader stops once the backlog passes HIGH_WATER.
    assert 17 * sent <= 2 * HIGH_WATER + 2 * RECEIVE_SIZE  # the upstream got stuck: nothing more read
    assert largest <= HIGH_WATER + RECEIVE_SIZE


class FailingBody:
    """A request body whose second read fails, as a downstream body over the limit does."""

    length = None
    trailers = None

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.reads = 0
        self.go_on = trio.Event()  # the second read waits for this

    async def read(self) -> bytes:
        self.reads += 1
        if self.reads == 1:
            return b"first chunk"
        await self.go_on.wait()
        raise self.error

    async def aclose(self) -> None:
        pass


class CountingPool(FakePool):
    def __init__(self) -> None:
        super().__init__()
        self.done = 0

    def stream_done(self, conn: object) -> None:
        self.done += 1


class OracleServer:
    """The upstream: h2's own server state machine over the other end of a memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.events: list[object] = []
        self.changed = trio.Event()
        self._sending = trio.Lock()

    async def flush(self) -> None:
        async with self._sending:
            await self.stream.send_all(self.h2.data_to_send())

    async def run(self) -> None:
        self.h2.initiate_connection()
        await self.flush()
        while data := await self.stream.receive_some(65536):
            self.events += self.h2.receive_data(data)
            self.changed.set()
            self.changed = trio.Event()
            await self.flush()

    async def wait_for(self, kind: type) -> object:
        while True:
            for event in self.events:
                if isinstance(event, kind):
                    return event
            await self.changed.wait()


@asynccontextmanager
async def oracle_upstream() -> AsyncIterator[tuple[H2ClientConnection, OracleServer, CountingPool]]:
    """A client connection to h2's server state machine, both running until the block ends."""
    ours, theirs = trio.testing.memory_stream_pair()
    pool = CountingPool()
    conn = H2ClientConnection(ours, pool, secure=False, mesh_peer=False)
    server = OracleServer(theirs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await conn.start(nursery)
        yield conn, server, pool
        nursery.cancel_scope.cancel()


def post(path: bytes, body: FailingBody, nursery: trio.Nursery) -> Request:
    request = Request(b"POST", path, b"orders", Headers(), body, ConnectionInfo("127.0.0.1", 1))
    request.task_nursery = nursery  # where the body pump runs, as the downstream server provides
    return request


async def test_a_request_body_failing_before_the_response_ends_the_try_at_once() -> None:
    """The downstream body turns bad after the head and a chunk went upstream: `send()` raises that
    failure (its local reply follows) and the stream is reset with CANCEL, not left to time out."""
    body = FailingBody(BodyTooLarge())
    async with oracle_upstream() as (conn, server, pool):
        async with trio.open_nursery() as request_nursery:

            async def fail_later() -> None:
                await server.wait_for(h2.events.DataReceived)  # the head and a chunk are upstream
                body.go_on.set()

            request_nursery.start_soon(fail_later)
            with trio.fail_after(5), pytest.raises(BodyTooLarge):
                await conn.send(post(b"/upload", body, request_nursery))
        reset = await server.wait_for(h2.events.StreamReset)
        assert reset.error_code == h2.errors.ErrorCodes.CANCEL  # type: ignore[attr-defined]
        assert pool.done == 1 and conn.active == 0


async def test_a_request_body_failing_after_the_response_started_cuts_the_response() -> None:
    body = FailingBody(BadRequest("invalid chunk size"))
    async with oracle_upstream() as (conn, server, pool):
        async with trio.open_nursery() as request_nursery:

            async def answer() -> None:
                received = await server.wait_for(h2.events.RequestReceived)
                stream_id = received.stream_id  # type: ignore[attr-defined]
                server.h2.send_headers(stream_id, [(b":status", b"200")])
                server.h2.send_data(stream_id, b"echo")
                await server.flush()

            request_nursery.start_soon(answer)
            with trio.fail_after(5):
                response = await conn.send(post(b"/echo", body, request_nursery))
                assert response.status == 200
                assert await response.body.read() == b"echo"
                body.go_on.set()
                with pytest.raises(BadRequest):
                    await response.body.read()  # the response is cut
        reset = await server.wait_for(h2.events.StreamReset)
        assert reset.error_code == h2.errors.ErrorCodes.CANCEL  # type: ignore[attr-defined]
        assert pool.done == 1
