"""`Backlog`: the bytes an HTTP/2 connection has queued for its writer task, shared by the server
and client sides.

Streams and the reader add frames (`add`); the writer takes the whole backlog (`take`) and sends it
in one write, so the frames of many streams share a TLS record and a syscall. One exception saves a
scheduler round trip per request on a quiet connection (`add_or_send`): when the writer is parked
with nothing queued, the caller writes the bytes itself, at once and without waiting (a synchronous
`try_send`, so no cancellation can cut a frame in half); what the socket does not take is queued.
`sent()` waits until what was queued is out (or the connection can send no more, `release()`):
that is the backpressure that bounds a connection's backlog for a peer that reads slowly.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class Backlog:
    __slots__ = ("_chunks", "_drained", "_wake", "size", "writing")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.size = 0  # bytes queued, not yet taken by the writer
        self.writing = False  # the writer is in a write (what it took is not sent yet)
        self._wake: trio.Event | None = None
        self._drained: trio.Event | None = None

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        self.wake()

    def add_or_send(self, data: bytes, try_send: Callable[[bytes], int] | None) -> None:
        """Send `data` now with `try_send` (how many bytes the socket took, without waiting) when
        the writer is parked with nothing queued; queue what is left, as `add`. With `try_send`
        None (a busy connection: batching its frames is worth more), just `add`."""
        if try_send is not None and not self._chunks and not self.writing and self._wake is not None:
            try:
                sent = try_send(data)
            except Exception:  # a broken connection: the writer meets the error and ends it
                sent = 0
            if sent >= len(data):
                return
            data = data[sent:]
        self.add(data)

    def wake(self) -> None:
        """Wake the writer (to send, or to notice the connection closed)."""
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def take(self) -> bytes:
        """Everything queued, as one buffer (the writer sends it)."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.size = 0
        return data

    def __bool__(self) -> bool:
        return bool(self._chunks)

    async def idle(self) -> None:
        """The writer has nothing to send: tell those waiting in `sent()`, then wait for work."""
        self.release()
        self._wake = wake = trio.Event()
        await wake.wait()

    async def sent(self) -> None:
        """Wait until what is queued has been written (or `release()` says it never will be)."""
        if not self.size and not self.writing:
            return
        if self._drained is None:
            self._drained = trio.Event()
        await self._drained.wait()

    def release(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.set()
