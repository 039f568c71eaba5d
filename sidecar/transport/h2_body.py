"""`H2Body`: a message body arriving on one HTTP/2 stream, shared by the server and client sides,
and the receive windows both sides advertise.

The windows bound what a connection holds for bodies its handlers have not read yet: at most
`STREAM_WINDOW` per stream and `CONNECTION_WINDOW` for all of them together. HTTP/2's defaults (64 KiB
for both) would let one connection carry only 64 KiB in flight across all its streams: fifty 16 KiB
responses on one connection would queue behind WINDOW_UPDATEs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from ..http.errors import BodyTooLarge, UpstreamTimeout
from ..http.message import Headers

STREAM_WINDOW = 256 * 1024  # SETTINGS_INITIAL_WINDOW_SIZE we advertise
CONNECTION_WINDOW = 1024 * 1024  # the connection window we open with a WINDOW_UPDATE at start


class FlowOwner(Protocol):
    """The connection a stream belongs to: it returns flow-control credit to the peer."""

    async def acknowledge(self, stream_id: int, flow_controlled: int) -> None:
        """Credit for a chunk read, sent at once (or batched by the codec)."""

    def release(self, stream_id: int, flow_controlled: int) -> None:
        """Credit for chunks that will never be read, sent with the connection's next write."""


class H2Body:
    """A body arriving on an HTTP/2 stream (a request on the server side, a response on the client
    side), fed by the connection's reader; reading a chunk acknowledges it to the peer, which is the
    backpressure: what a stream holds is bounded by its flow-control window. Chunks left unread when
    the body is given up are credited back too: the connection window is shared by every stream, and
    what an abandoned body kept would be lost to all of them.

    A response body may have a `stall_timeout` (the service's stream idle timeout): a wait for the
    next chunk longer than that gives the body up (the stream is reset) with 504 `upstream_timeout`,
    as `transport.body.WireBody` does on HTTP/1.1."""

    __slots__ = (
        "_chunks",
        "_ended",
        "_error",
        "_limit",
        "_on_done",
        "_owner",
        "_stall_timeout",
        "_stream_id",
        "_wake",
        "done",
        "failed",
        "length",
        "received",
        "trailers",
    )

    def __init__(
        self,
        owner: FlowOwner,
        stream_id: int,
        length: int | None,
        limit: int = 0,
        on_done: Callable[[bool], None] | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        self._owner = owner
        self._stall_timeout = stall_timeout
        self._on_done = on_done
        self._stream_id = stream_id
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._wake: trio.Event | None = None
        self._ended = False
        self._error: Exception | None = None
        self._limit = limit
        self.received = 0  # body bytes read so far (the access log's bytes_in)
        self.length = length
        self.trailers: Headers | None = None
        self.done = False
        self.failed = False

    # -- fed by the reader ------------------------------------------------------------------------

    def feed(self, data: bytes, flow_controlled: int) -> None:
        if self.done:  # given up already: nobody will read it
            self._owner.release(self._stream_id, flow_controlled)
            return
        self._chunks.append((data, flow_controlled))
        self._notify()

    def end(self, trailers: Headers | None = None) -> None:
        if trailers is not None:
            self.trailers = trailers
        self._ended = True
        self._notify()

    def fail(self, error: Exception) -> None:
        if self._ended:  # complete already: a reset after the end (e.g. RST_STREAM NO_ERROR) loses nothing
            return
        self._error = error
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    # -- read by the handler ----------------------------------------------------------------------

    async def read(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                self._finish(failed=True)
                raise self._error
            if self._ended or self.done:
                self._finish(failed=self.failed)
                return b""
            self._wake = wake = trio.Event()
            if self._stall_timeout is None:
                await wake.wait()
                continue
            with trio.CancelScope(relative_deadline=self._stall_timeout):
                await wake.wait()
                continue
            self._finish(failed=True)
            raise UpstreamTimeout(detail=f"no body bytes for {self._stall_timeout}s")
        data, flow_controlled = self._chunks.popleft()
        await self._owner.acknowledge(self._stream_id, flow_controlled)
        self.received += len(data)
        if self._limit and self.received > self._limit:
            self._finish(failed=True)
            raise BodyTooLarge()
        return data

    def _finish(self, *, failed: bool) -> None:
        self.done = True
        self.failed = failed
        if self._chunks:  # never to be read: their credit goes back to the peer
            unread = sum(flow_controlled for _, flow_controlled in self._chunks)
            self._chunks.clear()
            self._owner.release(self._stream_id, unread)
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(failed)

    @property
    def read_to_length(self) -> bool:
        """Every byte its content-length announced has been read (END_STREAM may still be to come)."""
        return self.length is not None and self.received == self.length and not self._chunks

    def abandon(self) -> None:
        """Give the body up unread (what it holds is credited back)."""
        if not self.done:
            self._finish(failed=True)

    async def aclose(self) -> None:
        self.abandon()
