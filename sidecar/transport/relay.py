"""Opaque TCP: bytes carried both ways between two connections, half-closes passed through.

A `Side` is one end as the relay sees it: bytes in (`b""` once its peer ended its sending), bytes
out, an end of sending (`send_eof`), and `abort` (close at once; the peer of a plain TCP socket sees
a reset). `PlainSide` is a socket as it is (the app's connection, a plaintext or simple-TLS upstream);
the tunnel between two sidecars is `tunnel.TunnelSide`.

`relay` runs one pump per direction. A pump that reads the end of one side's sending passes it on
(`send_eof`); the relay returns once both have, so a client that half-closes after its request still
gets the whole answer, and a server that speaks first is carried as well. A failure on either side
(a reset, a tunnel cut without its end) ends both directions at once and aborts both sides: nothing
is left half-open. Bytes are counted per direction as they are passed on.

A side whose sending has ended is still watched (`Side.watch`) until the other direction ends too:
a client that half-closes after its request and then resets (it gave up) ends the exchange at once,
rather than when the silent server next writes. A plain socket is looked at with one `poll()` for
POLLERR every WATCH_INTERVAL (after a FIN, `recv()` answers b"" even once a reset came, and
readiness never settles); a tunnel is read, since after its end frame only its cut can come.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from .tcp import TcpStream
from .tls_socket import TlsStream

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
READ_SIZE = 65536 - 4  # bytes read from a plain side at a time
WATCH_INTERVAL = 0.5  # seconds between looks at a half-closed plain socket for a reset


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

    async def watch(self) -> None:
        """After the end of its sending: return (or raise) when the side fails; until then, wait."""
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
        # A read's bytes plus the tunnel's 4-byte frame header fill four TLS records exactly.
        return await self.stream.receive_some(READ_SIZE)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_eof(self) -> None:
        stream = self.stream
        if isinstance(stream, TcpStream):
            await stream.send_eof()
            return
        await trio.lowlevel.checkpoint()
        with contextlib.suppress(OSError):
            # The socket's own shutdown: `SSLSocket.shutdown` would also drop the TLS layer, and the
            # answer still to come would then be read as raw ciphertext.
            socket.socket.shutdown(stream.sock, socket.SHUT_WR)

    def abort(self) -> None:
        reset(self.stream.sock)
        self.stream.close_now()

    async def watch(self) -> None:
        poller = select.poll()
        poller.register(self.stream.sock.fileno(), select.POLLERR)
        while not poller.poll(0):
            await trio.sleep(WATCH_INTERVAL)
        raise trio.BrokenResourceError("reset after the end of its sending")


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
    ended: list[bool] = []  # a True per direction whose end was passed on
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, downstream, upstream, carried, True, ended, nursery.cancel_scope)
            nursery.start_soon(_pump, upstream, downstream, carried, False, ended, nursery.cancel_scope)
    except* RelayBroken as group:
        broken = group.exceptions[0]
        assert isinstance(broken, RelayBroken)
        carried.failed = broken.side
        carried.detail = broken.detail
        downstream.abort()
        upstream.abort()


async def _pump(
    source: Side, sink: Side, carried: Carried, from_downstream: bool, ended: list[bool], both: trio.CancelScope
) -> None:
    """One direction, until its end is passed on; then watch `source` until the other direction
    ends too (which cancels `both`, the watch included)."""
    names = ("downstream", "upstream") if from_downstream else ("upstream", "downstream")
    while True:
        try:
            data = await source.receive()
        except _FAILURES as exc:
            raise RelayBroken(names[0], str(exc) or type(exc).__name__) from None
        try:
            if not data:
                await sink.send_eof()
                break
            await sink.send(data)
        except _FAILURES as exc:
            raise RelayBroken(names[1], str(exc) or type(exc).__name__) from None
        carried.add(from_downstream, len(data))
    ended.append(True)
    if len(ended) == 2:
        both.cancel()
        return
    try:
        await source.watch()
    except _FAILURES as exc:
        raise RelayBroken(names[0], str(exc) or type(exc).__name__) from None
    raise RelayBroken(names[0], "closed after the end of its sending")


class TunnelError(Exception):
    """The tunnel between two sidecars broke its framing, or ended without its end frame."""


_FAILURES = (trio.BrokenResourceError, trio.ClosedResourceError, TunnelError)
