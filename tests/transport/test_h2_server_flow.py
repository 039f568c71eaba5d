"""sidecar.transport.h2_server.H2Server's flow control over in-memory streams: request bodies a
handler never reads give their connection window back, so the connection keeps flowing."""

from __future__ import annotations

import trio
import trio.testing
from hyperframe.frame import DataFrame

from sidecar.transport.h2_body import CONNECTION_WINDOW
from tests.transport.test_h2_server_abuse import Work, serving


async def test_bodies_never_read_give_their_window_back(autojump_clock: trio.testing.MockClock) -> None:
    """The handler answers without reading the request body: the stream is reset, and the bytes that
    had arrived for it are credited to the connection (else a few such requests would shut it)."""
    async with serving(Work()) as h:
        peer = h.peer
        size = 100_000  # per stream; 8 streams: 800 KB, within the 1 MiB connection window
        for i in range(8):
            stream_id = 2 * i + 1
            frames = [peer.request(stream_id, "/info", end_stream=False)]
            frames += [DataFrame(stream_id, b"x" * 10_000) for _ in range(size // 10_000)]
            await peer.send(*frames)
            await peer.until(lambda sid=stream_id: sid in peer.ended)  # type: ignore[misc]
        await h.round_trip()
        codec = h.server.h2
        assert codec.streams == {}
        # Every byte received is credited back, or owed in the next WINDOW_UPDATE: none is held.
        assert codec.recv_connection_window + codec._connection_unacknowledged == CONNECTION_WINDOW
