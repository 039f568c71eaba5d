"""A trio stream with a read buffer: the only object HTTP/1.1 adapters read bytes through.

Parsers in `http/h1.py` consume from `Wire.buf` in place; `fill()` appends what the peer sent.
Broken and closed streams read as end-of-stream here; callers decide what an early end means.
"""

from __future__ import annotations

import trio

from .tcp import TcpStream
from .tls_socket import TlsStream

RECEIVE_SIZE = 65536  # one read; also the most a body chunk ever holds, which bounds memory


class Wire:
    __slots__ = ("buf", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def fill(self) -> bool:
        """Read once more into `buf`; False when the peer closed (or the stream broke)."""
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        if not data:
            return False
        self.buf += data
        return True

    async def fill_when_readable(self) -> bool:
        """`fill` for bytes that cannot have arrived yet (the response to a request just sent): the
        stream waits for its socket before reading, where it can (TcpStream, TlsStream)."""
        receive = getattr(self.stream, "receive_when_readable", None)
        if receive is None:
            return await self.fill()
        try:
            data = await receive(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        if not data:
            return False
        self.buf += data
        return True

    async def receive(self, max_bytes: int) -> bytes:
        """Read straight from the stream, bypassing the (empty) buffer; b"" at end."""
        try:
            return bytes(await self.stream.receive_some(min(max_bytes, RECEIVE_SIZE)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def close_now(self) -> None:
        """Close the underlying socket at once, waking any task blocked on it."""
        close_stream_now(self.stream)


def close_stream_now(stream: trio.abc.Stream) -> None:
    """Synchronous close of a TCP-backed stream (TLS included): no close_notify, no wait."""
    inner: object = stream
    while inner is not None:
        if isinstance(inner, TcpStream | TlsStream):
            inner.close_now()
            return
        sock = getattr(inner, "socket", None)
        if sock is not None:  # a trio.SocketStream (tests may hand one in)
            sock.close()
            return
        inner = getattr(inner, "transport_stream", None)
