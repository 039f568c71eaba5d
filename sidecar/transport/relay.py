"""Opaque TCP: bytes carried both ways between two connections, half-closes passed through.

A `Side` is one end as the relay sees it: bytes in (`b""` once its peer ended its sending), bytes
out, an end of sending (`send_eof`), and `abort` (close at once; the peer of a plain TCP socket sees
a reset). `PlainSide` is a socket as it is (the app's connection, a plaintext or simple-TLS upstream);
the tunnel between two sidecars is `tunnel.TunnelSide`.

`relay` runs one pump per direction. A pump that reads the end of one side's sending passes it on
(`send_eof`) and stops; the relay returns once both have, so a client that half-closes after its
request still gets the whole answer, and a server that speaks first is carried as well. A failure
on either side (a reset, a tunnel cut without its end) ends both directions at once and aborts both
sides: nothing is left half-open. Bytes are counted per direction as they are passed on.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from .tcp import TcpStream
from .tls_socket import TlsStream

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


class Side(Protocol):
    async def receive(self) -> bytes:
        """The next bytes; b"" once the peer has ended its sending (and ever after)."""
        ...

    async def send(self, data: bytes) -> None: ...

    async def send_eof(self) -> None:
        """End our sending (the peer reads the end); receiving goes on."""
        ...

    def abort(self) -> None:
        """Close at once, as a reset where the transport can say so."""
        ...


def reset(sock: socket.socket) -> None:
    """Make the socket's close a reset (RST) rather than an orderly end (FIN)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


class PlainSide:
    """A connection's own bytes, as they come: plain TCP, or TLS this sidecar speaks to an outside
    server (`tls.mode: simple`), whose end of sending is a TCP half-close under the TLS session."""

    __slots__ = ("stream",)

    def __init__(self, stream: TcpStream | TlsStream) -> None:
        self.stream = stream

    async def receive(self) -> bytes:
        return await self.stream.receive_some()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_eof(self) -> None:
        stream = self.stream
        if isinstance(stream, TcpStream):
            await stream.send_eof()
            return
        await trio.lowlevel.checkpoint()
        with contextlib.suppress(OSError):
            stream.sock.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        reset(self.stream.sock)
        self.stream.close_now()


class RelayBroken(Exception):
    """One side failed: `side` is "downstream" or "upstream"."""

    def __init__(self, side: str, detail: str) -> None:
        super().__init__(f"{side}: {detail}")
        self.side = side
        self.detail = detail


@dataclass(slots=True)
class Carried:
    """What a relay carried: bytes each way, and the side that failed (None: both ended cleanly).
    With `totals`, each pass is also added there under `keys` (received, sent): live metrics."""

    received: int = 0  # from downstream, passed upstream
    sent: int = 0  # from upstream, passed downstream
    failed: str | None = None
    detail: str = ""
    totals: Counter[Any] | None = None
    keys: tuple[Any, Any] = (None, None)

    def add(self, from_downstream: bool, size: int) -> None:
        if from_downstream:
            self.received += size
        else:
            self.sent += size
        if self.totals is not None:
            self.totals[self.keys[0 if from_downstream else 1]] += size


async def relay(downstream: Side, upstream: Side, carried: Carried) -> None:
    """Carry bytes both ways until both directions have ended (or one side failed: then both sides
    are aborted and `carried.failed` names it). The caller closes both afterwards."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, downstream, upstream, carried, True)
            nursery.start_soon(_pump, upstream, downstream, carried, False)
    except* RelayBroken as group:
        broken = group.exceptions[0]
        assert isinstance(broken, RelayBroken)
        carried.failed = broken.side
        carried.detail = broken.detail
        downstream.abort()
        upstream.abort()


async def _pump(source: Side, sink: Side, carried: Carried, from_downstream: bool) -> None:
    names = ("downstream", "upstream") if from_downstream else ("upstream", "downstream")
    while True:
        try:
            data = await source.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError, TunnelError) as exc:
            raise RelayBroken(names[0], str(exc) or type(exc).__name__) from None
        try:
            if not data:
                await sink.send_eof()
                return
            await sink.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, TunnelError) as exc:
            raise RelayBroken(names[1], str(exc) or type(exc).__name__) from None
        carried.add(from_downstream, len(data))


class TunnelError(Exception):
    """The tunnel between two sidecars broke its framing, or ended without its end frame."""
