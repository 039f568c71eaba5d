"""The byte splice after a `101 Switching Protocols`: the downstream and upstream connections now
speak the upgraded protocol (WebSocket), and the sidecar relays bytes both ways without parsing them.

- `UpgradedBody` is how the upstream connection travels up the pipeline: the body of the 101
  response, with no bytes of its own, released (the connection closed) when the tunnel ends.
- Backpressure: each direction reads one bounded chunk and sends it whole before reading the next,
  so a slow reader on one side stops the sidecar reading from the other; at most one chunk per
  direction is ever held. Bytes that arrived past either head (left in a `Wire`'s buffer) go first.
- End: a side that closes is passed on as a half-close when the other side's stream can do one
  (plain TCP), and the other direction keeps flowing; where it cannot (TLS), or a stream breaks,
  both connections close.
- Idle: no byte in either direction for `idle_timeout` seconds closes both. The request timeout
  does not apply here: it ended with the response head.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..http.message import Headers
from ..logger import get_logger
from .wire import RECEIVE_SIZE, Wire

log = get_logger("sidecar.tunnel")

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class UpgradedBody:
    """The body of a 101 response from upstream: the upstream connection, switched to the upgraded
    protocol, for the downstream server to splice with its own. `aclose()` releases it (once)."""

    __slots__ = ("_release", "idle_timeout", "wire")
    length: int | None = 0
    trailers: Headers | None = None

    def __init__(self, wire: Wire, release: Callable[[], None], idle_timeout: float) -> None:
        self.wire = wire
        self.idle_timeout = idle_timeout
        self._release: Callable[[], None] | None = release

    async def read(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class _Splice:
    """The state both directions of one tunnel share: the idle deadline and the way to end it all."""

    __slots__ = ("idle", "idle_timeout", "tunnel")

    def __init__(self, idle: trio.CancelScope, idle_timeout: float, tunnel: trio.CancelScope) -> None:
        self.idle = idle
        self.idle_timeout = idle_timeout
        self.tunnel = tunnel

    async def relay(self, source: Wire, sink: Wire) -> None:
        """Carry `source`'s bytes to `sink` until `source` ends, then pass the end on."""
        try:
            if source.buf:  # arrived with the head, before the switch
                data = bytes(source.buf)
                source.buf.clear()
                await sink.send(data)
            while data := await source.receive(RECEIVE_SIZE):
                self.idle.deadline = trio.current_time() + self.idle_timeout
                await sink.send(data)
            stream = sink.stream
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
                return  # the other direction goes on until its own end
        except _STREAM_ERRORS:
            pass  # `sink` is gone: nothing more can cross in either direction
        self.tunnel.cancel()


async def splice(downstream: Wire, upstream: Wire, idle_timeout: float) -> None:
    """Relay bytes between the two connections until both directions ended, one broke, or the
    tunnel stayed silent for `idle_timeout` seconds. The caller closes both connections afterwards."""
    with trio.move_on_after(idle_timeout) as idle:
        async with trio.open_nursery() as nursery:
            shared = _Splice(idle, idle_timeout, nursery.cancel_scope)
            nursery.start_soon(shared.relay, downstream, upstream)
            nursery.start_soon(shared.relay, upstream, downstream)
    if idle.cancelled_caught:
        log.info("tunnel_idle_timeout", idle_timeout=idle_timeout)
