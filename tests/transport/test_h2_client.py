"""sidecar.transport.h2_client.H2ClientConnection against a raw HTTP/2 server over in-memory streams:
what an upstream that misbehaves can make the client hold stays bounded."""

from __future__ import annotations

import trio
import trio.testing

from sidecar.transport.h2_client import HIGH_WATER, H2ClientConnection
from sidecar.transport.wire import RECEIVE_SIZE
from tests.http.h2_frames import ping, settings


class FakePool:
    """What the connection asks of its pool."""

    tls = None

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
    conn = H2ClientConnection(ours, FakePool())  # type: ignore[arg-type]
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
