"""The tunnel that carries one opaque TCP connection between two sidecars, inside mutual TLS.

The calling sidecar offers ALPN `sidecar-tcp/1` (never offered for HTTP), so the receiving sidecar
knows before any byte that the connection is TCP. The caller then writes the app port the
connection is for (2 bytes, big-endian; 0: the receiver's only `inbound.tcp_ports` entry), and both
directions carry frames: a 4-byte big-endian length, then that many bytes. A frame of length 0 ends
that direction: the half-close of the connection it carries, authenticated by TLS (a bare TCP FIN
under TLS could be forged or cut short; TLS's own close_notify cannot be sent as a half-close
through Python's `ssl`). A tunnel whose TLS connection ends without that frame was cut: the relay
resets the connection it carries.

`FrameDecoder` is the sans-IO half (bytes in, payload out); `TunnelSide` puts it on a TLS stream as
a `relay.Side`.
"""

from __future__ import annotations

import struct

import trio

from .relay import TunnelError, reset
from .tls_socket import TlsStream

ALPN_TCP = "sidecar-tcp/1"  # as `tls.ALPN_TCP`, which the TLS contexts offer
PORT = struct.Struct("!H")
HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 20  # a sender writes what one read gave it (64 KiB at most); more is not a sidecar


class FrameDecoder:
    """Frames in, their payloads out; `ended` once the end frame came."""

    __slots__ = ("_head", "_left", "ended")

    def __init__(self) -> None:
        self._head = b""  # a frame header in part
        self._left = 0  # payload bytes of the current frame still to come
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        """The payload bytes in `data` (b"" if it held only headers); raises TunnelError on bytes
        after the end frame or an oversized frame."""
        if self.ended and data:
            raise TunnelError("bytes after the end of the tunnel")
        out: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            left = self._left
            if left:
                take = min(left, size - pos)
                out.append(data[pos : pos + take] if take != size else data)
                pos += take
                self._left = left - take
                continue
            need = HEADER.size - len(self._head)
            self._head += data[pos : pos + need]
            pos += need
            if len(self._head) < HEADER.size:
                break
            (length,) = HEADER.unpack(self._head)
            self._head = b""
            if length == 0:
                self.ended = True
                if pos < size:
                    raise TunnelError("bytes after the end of the tunnel")
                break
            if length > MAX_FRAME:
                raise TunnelError(f"frame of {length} bytes (at most {MAX_FRAME})")
            self._left = length
        return out[0] if len(out) == 1 else b"".join(out)


class TunnelSide:
    """The tunnel's end on this sidecar, as the relay sees it."""

    __slots__ = ("_decoder", "_first", "stream")

    def __init__(self, stream: TlsStream, first: bytes = b"") -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._first = first  # bytes read past the port, already in the frames

    async def receive(self) -> bytes:
        decoder = self._decoder
        while not decoder.ended:
            if self._first:
                data, self._first = self._first, b""
            else:
                data = await self.stream.receive_some()
                if not data:
                    raise TunnelError("the tunnel ended without its end frame")
            payload = decoder.feed(data)
            if payload:
                return payload
        await trio.lowlevel.checkpoint()
        return b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(HEADER.pack(len(data)) + data)

    async def send_eof(self) -> None:
        await self.stream.send_all(HEADER.pack(0))

    def abort(self) -> None:
        reset(self.stream.sock)
        self.stream.close_now()

    async def watch(self) -> None:
        """After the end frame the peer sends nothing more; whatever comes (its close, a reset,
        stray bytes) means it is gone before the other direction ended."""
        data = await self.stream.receive_some()
        raise TunnelError("bytes after the end of the tunnel" if data else "the tunnel closed before both ends")


async def send_port(stream: TlsStream, port: int) -> None:
    """The caller's first bytes: which app port the tunnel is for (0: the receiver's only one)."""
    await stream.send_all(PORT.pack(port))


async def receive_port(stream: TlsStream) -> tuple[int, bytes]:
    """The port the caller asked for, and the bytes that came after it (the start of its frames).
    Raises TunnelError when the tunnel ends first."""
    got = b""
    while len(got) < PORT.size:
        data = await stream.receive_some()
        if not data:
            raise TunnelError("the tunnel ended before its port")
        got += data
    (port,) = PORT.unpack_from(got)
    return port, got[PORT.size :]
