"""HTTP/2 abuse limits of the server side: the thresholds, the per-connection budgets that enforce
them, and h2's frame buffer with a byte bound on a header block still waiting for END_HEADERS.

What this module owns, and the attack each answers:

- **Concurrent streams.** `MAX_CONCURRENT_STREAMS` is advertised; the server refuses streams past it
  one by one with REFUSED_STREAM (never processed, safe to retry: a client may open streams before
  our SETTINGS reach it). h2 itself is held to `STREAM_HARD_LIMIT`, past which it ends the
  connection with PROTOCOL_ERROR: a client that far over the limit is ignoring it.
- **Rapid reset** (CVE-2023-44487). Every stream the client resets while we work on it, and every
  stream we refuse, spends a token of the connection's reset budget; every stream completed
  normally earns one back. The budget refills with time too, so a client may cancel a burst of
  streams, or cancel many over a long life, but cannot churn streams faster than the server serves
  them. Past it: GOAWAY ENHANCE_YOUR_CALM.
- **SETTINGS and PING floods.** Each costs an ACK frame; both have a budget per connection.
- **Header blocks.** HPACK decoding stops at `HEADER_LIMIT_FACTOR` times the header limit (an HPACK bomb
  becomes a connection error), and the encoded block buffered across CONTINUATION frames is bounded
  by the same number of bytes (h2 alone bounds it to 64 frames, up to 1 MiB). A decoded list between
  the limit and that bound is answered 431 on its stream by the server.
- **Stalled peers.** `STALL_TIMEOUT_FACTOR` derives how long a response may wait for flow-control
  window, or a write for the socket, before the stream (or connection) is given up.

The budgets are token buckets updated in O(1) with no allocation; they take the time as an argument
so they stay testable without an event loop.
"""

from __future__ import annotations

import math

import h2.errors
import h2.exceptions
import h2.frame_buffer
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame

MAX_CONCURRENT_STREAMS = 128
"""Advertised in SETTINGS; streams past it are refused (REFUSED_STREAM)."""
STREAM_HARD_LIMIT = 2 * MAX_CONCURRENT_STREAMS
"""Open streams h2 accepts before it ends the connection (PROTOCOL_ERROR)."""

RESET_BURST = 2 * MAX_CONCURRENT_STREAMS
"""Streams a client may reset at once: cancelling every open stream, twice over."""
RESET_RATE = 100.0
"""Resets per second the budget refills by (on top of one per stream completed normally)."""

PING_BURST = 100
PING_RATE = 20.0
"""PINGs per second: well above keepalive pings and gRPC's bandwidth-estimation pings."""

SETTINGS_BURST = 32
SETTINGS_RATE = 10.0
"""SETTINGS frames per second: a client sends one, plus a few as its windows grow."""

HEADER_LIMIT_FACTOR = 2
"""HPACK decoding, and the encoded block buffered across CONTINUATION frames, stop at this multiple
of `max_request_headers`: a list just over the limit is decoded and answered 431 on its stream; a
block past this is absurd and ends the connection (ENHANCE_YOUR_CALM)."""

STALL_TIMEOUT_FACTOR = 6
"""A response waiting for flow-control window, or a write waiting for the peer to read, is given up
after this multiple of `header_read_timeout` with no progress (60 s by default, nginx's
`send_timeout`). It is derived from the header read timeout because both bound how long a slow
client may hold the sidecar's resources without progress; it is a multiple because a consumer that
applies backpressure to a streamed response is legitimate, while a head that takes long to arrive
is not."""


class PeerAbuse(Exception):
    """The peer broke an abuse limit: the connection ends with GOAWAY `error_code`."""

    def __init__(self, reason: str, error_code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code


class HeaderBlockTooLarge(h2.exceptions.DenialOfServiceError):
    """An encoded header block outgrew its bound while CONTINUATION frames kept coming."""


def abuse_reason(error: h2.exceptions.ProtocolError) -> str | None:
    """The abuse h2 (or `HeaderBlockBuffer`) detected, when the protocol error is one."""
    if isinstance(error, HeaderBlockTooLarge):
        return "continuation_flood"
    if isinstance(error, h2.exceptions.DenialOfServiceError):
        return "hpack_bomb"  # HPACK decoding stopped at the bound
    if isinstance(error, h2.exceptions.TooManyStreamsError):
        return "too_many_streams"
    if "continuation" in str(error).lower():
        return "continuation_flood"  # h2's own bound: 64 CONTINUATION frames
    return None


class RateBudget:
    """A token bucket: `burst` events at once, refilled at `rate` per second; `spend` is O(1)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.stamp = -math.inf  # the first spend refills to the full burst whatever the clock reads

    def spend(self, now: float) -> bool:
        """Take one token; False (and nothing taken) when the bucket is empty."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def refund(self) -> None:
        """Give one token back (up to the burst)."""
        tokens = self.tokens + 1.0
        self.tokens = tokens if tokens < self.burst else self.burst


class ConnectionGuard:
    """The abuse budgets of one HTTP/2 connection; each check raises `PeerAbuse` past its limit."""

    __slots__ = ("pings", "resets", "settings")

    def __init__(self) -> None:
        self.resets = RateBudget(RESET_BURST, RESET_RATE)
        self.pings = RateBudget(PING_BURST, PING_RATE)
        self.settings = RateBudget(SETTINGS_BURST, SETTINGS_RATE)

    def stream_cancelled(self, now: float, reason: str = "rapid_reset") -> None:
        """A stream we started work for was reset by the client, or refused by us."""
        if not self.resets.spend(now):
            raise PeerAbuse(reason)

    def stream_completed(self) -> None:
        self.resets.refund()

    def ping(self, now: float) -> None:
        if not self.pings.spend(now):
            raise PeerAbuse("ping_flood")

    def settings_frame(self, now: float) -> None:
        if not self.settings.spend(now):
            raise PeerAbuse("settings_flood")


class HeaderBlockBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer (server side) with the encoded header block that is still waiting for
    END_HEADERS bounded to `max_block` bytes (ENHANCE_YOUR_CALM past it). h2 counts CONTINUATION
    frames only; this counts their bytes. It hooks `_update_header_buffer`, the one place every
    received frame passes through; a frame outside a multi-frame block costs one type check."""

    def __init__(self, max_block: int) -> None:
        super().__init__(server=True)
        self.max_block = max_block
        self._block = 0

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if isinstance(f, (HeadersFrame, ContinuationFrame)) and (self._block or "END_HEADERS" not in f.flags):
            self._block += len(f.data)
            if self._block > self.max_block:
                raise HeaderBlockTooLarge(f"header block over {self.max_block} bytes")
            if "END_HEADERS" in f.flags:
                self._block = 0
        return super()._update_header_buffer(f)
