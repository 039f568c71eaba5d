"""`WireBody`: a message body read off an HTTP/1.1 connection, one chunk per `read()`.

It knows the three HTTP/1.1 framings (Content-Length, chunked, until close), enforces size limits
on the body and its trailer section while streaming, can send `100 Continue` when first read, and
tells its owner exactly once how it ended (`on_end` after the last byte, `on_abort` when closed
early) so connections go back to their pool only when their message was read to the end. An
upstream response body that waits longer than its `stall_timeout` for more bytes ends with 504
`upstream_timeout` (a stalled stream).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from ..http.errors import BodyTooLarge, UpstreamTimeout
from ..http.h1 import CHUNKED, END, MAX_TRAILERS, UNTIL_CLOSE, ChunkedDecoder, ProtocolViolation
from ..http.message import Headers
from .wire import RECEIVE_SIZE, Wire

ErrorFactory = Callable[[str], Exception]
ViolationFactory = Callable[[ProtocolViolation], Exception]


class WireBody:
    __slots__ = (
        "_decoder",
        "_fail_truncated",
        "_fail_violation",
        "_limit",
        "_on_abort",
        "_on_end",
        "_on_first_read",
        "_remaining",
        "_stall_timeout",
        "_wire",
        "done",
        "failed",
        "length",
        "received",
        "trailers",
    )

    def __init__(
        self,
        wire: Wire,
        framing: int,
        *,
        truncated: ErrorFactory,
        violation: ViolationFactory,
        on_end: Callable[[], None] | None = None,
        on_abort: Callable[[], None] | None = None,
        limit: int = 0,
        max_trailers: int = MAX_TRAILERS,
        on_first_read: Callable[[], Awaitable[None]] | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        self._wire = wire
        self._decoder = ChunkedDecoder(max_trailers) if framing == CHUNKED else None
        self._remaining = framing  # bytes left, or UNTIL_CLOSE / CHUNKED
        self.length: int | None = framing if framing >= 0 else None
        self.trailers: Headers | None = None
        self.done = False  # no more bytes will come out
        self.failed = False  # ...because it broke or was abandoned, not because it ended
        self._fail_truncated = truncated
        self._fail_violation = violation
        self._on_end = on_end
        self._on_abort = on_abort
        self._limit = limit
        self.received = 0  # body bytes read so far (the access log's bytes_in)
        self._on_first_read = on_first_read
        self._stall_timeout = stall_timeout  # a wait for more bytes longer than this ends the body

    def _finish(self) -> None:
        self.done = True
        on_end, self._on_end, self._on_abort = self._on_end, None, None
        if on_end is not None:
            on_end()

    async def read(self) -> bytes:
        if self.done:
            return b""
        if self._on_first_read is not None:
            first, self._on_first_read = self._on_first_read, None
            await first()
        wire = self._wire
        decoder = self._decoder
        if decoder is not None:
            while True:
                try:
                    data = decoder.next(wire.buf)
                except ProtocolViolation as exc:
                    self._abort()
                    raise self._fail_violation(exc) from None
                if data is None:
                    if not await self._fill():
                        self._abort()
                        raise self._fail_truncated("body ended before its last chunk")
                    continue
                if data is END:
                    self.trailers = decoder.trailers
                    self._finish()
                    return b""
                return self._count(data)
        remaining = self._remaining
        if remaining == 0:
            self._finish()
            return b""
        buf = wire.buf
        if buf:
            if remaining == UNTIL_CLOSE or remaining >= len(buf):
                data = bytes(buf)
                buf.clear()
            else:
                data = bytes(buf[:remaining])
                del buf[:remaining]
        else:
            data = await self._receive(RECEIVE_SIZE if remaining == UNTIL_CLOSE else remaining)
            if not data:
                if remaining == UNTIL_CLOSE:
                    self._finish()
                    return b""
                self._abort()
                raise self._fail_truncated("body shorter than its Content-Length")
        if remaining != UNTIL_CLOSE:
            remaining -= len(data)
            self._remaining = remaining
            if remaining == 0:
                self._count(data)
                self._finish()
                return data
        return self._count(data)

    async def _fill(self) -> bool:
        if self._stall_timeout is None:
            return await self._wire.fill()
        with trio.CancelScope(relative_deadline=self._stall_timeout):
            return await self._wire.fill()
        self._stalled()

    async def _receive(self, max_bytes: int) -> bytes:
        if self._stall_timeout is None:
            return await self._wire.receive(max_bytes)
        with trio.CancelScope(relative_deadline=self._stall_timeout):
            return await self._wire.receive(max_bytes)
        self._stalled()

    def _stalled(self) -> NoReturn:
        self._abort()
        raise UpstreamTimeout(detail=f"no body bytes for {self._stall_timeout}s")

    def _count(self, data: bytes) -> bytes:
        self.received += len(data)
        if self._limit and self.received > self._limit:
            self._abort()
            raise BodyTooLarge()
        return data

    def _abort(self) -> None:
        self.done = True
        self.failed = True
        on_abort, self._on_end, self._on_abort = self._on_abort, None, None
        if on_abort is not None:
            on_abort()

    async def aclose(self) -> None:
        if not self.done:
            self._abort()
