"""HTTP/2 abuse limits of the server side: the thresholds, the per-connection budgets that enforce
them, and the codec configured with the limits it enforces itself.

What this module owns, and the attack each answers:

- **Concurrent streams.** `MAX_CONCURRENT_STREAMS` is advertised; the codec refuses streams past it
  one by one with REFUSED_STREAM (never processed, safe to retry: a client may open streams before
  our SETTINGS reach it). Past `STREAM_HARD_LIMIT` streams open or refused since one last closed, it
  ends the connection with PROTOCOL_ERROR: a client that far over the limit is ignoring it.
- **Rapid reset** (CVE-2023-44487, and its MadeYouReset variant). Every stream the client resets
  while we work on it, every stream we reset for the client's protocol error on it, and every stream
  we refuse, spends a token of the connection's reset budget; every stream completed normally earns
  one back. The budget refills with time too, so a client may cancel a burst of streams, or cancel
  many over a long life, but cannot churn streams faster than the server serves them. Past it:
  GOAWAY ENHANCE_YOUR_CALM.
- **SETTINGS and PING floods.** Each costs an ACK frame (a SETTINGS frame may also move every
  stream's window); both have a budget per connection, checked by the codec before it handles the
  frame (`frame_guard`), so a flood stops in the middle of the read that carries it.
- **Header blocks.** HPACK decoding stops at `header_bound()`: `HEADER_LIMIT_FACTOR` times the header
  limit, and never below `HEADER_BOUND_FLOOR` (an HPACK bomb becomes a connection error); the encoded
  block buffered across CONTINUATION frames is bounded by the same number of bytes and by 64 frames.
  A decoded list between the limit and that bound is answered 431 on its stream by the server, and
  the connection goes on: a calling sidecar whose own limit is the default (64 KiB) never loses a
  connection, and the other requests on it, to a peer configured with a smaller limit.
- **Stalled peers.** `STALL_TIMEOUT_FACTOR` derives how long a response may wait for flow-control
  window, or a write for the socket, before the stream (or connection) is given up.

The budgets are token buckets updated in O(1) with no allocation; they take the time as an argument
so they stay testable without an event loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..http.h2_conn import PING, SETTINGS, ErrorCode, H2Connection
from .h2_body import CONNECTION_WINDOW, STREAM_WINDOW

MAX_CONCURRENT_STREAMS = 128
"""Advertised in SETTINGS; streams past it are refused (REFUSED_STREAM)."""
STREAM_HARD_LIMIT = 2 * MAX_CONCURRENT_STREAMS
"""Streams open or refused at once past which the codec ends the connection (PROTOCOL_ERROR)."""

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
HEADER_BOUND_FLOOR = 256 * 1024
"""...but never below this many bytes: twice the default limit with room for HTTP/2's 32 bytes per
field, so whatever a sidecar with default limits forwards is answered on its stream (431), however
small the receiving sidecar's limit, instead of ending a connection other requests share."""

STALL_TIMEOUT_FACTOR = 6
"""A response waiting for flow-control window, or a write waiting for the peer to read, is given up
after this multiple of `header_read_timeout` with no progress (60 s by default, nginx's
`send_timeout`). It is derived from the header read timeout because both bound how long a slow
client may hold the sidecar's resources without progress; it is a multiple because a consumer that
applies backpressure to a streamed response is legitimate, while a head that takes long to arrive
is not."""


class PeerAbuse(Exception):
    """The peer broke an abuse limit: the connection ends with GOAWAY `error_code`."""

    def __init__(self, reason: str, error_code: int = ErrorCode.ENHANCE_YOUR_CALM) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code


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

    def frame_guard(self, clock: Callable[[], float]) -> Callable[[int], None]:
        """The codec's `frame_guard`: SETTINGS and PING frames spend their budgets, at `clock()`."""

        def spend(frame_type: int) -> None:
            if frame_type == PING:
                self.ping(clock())
            elif frame_type == SETTINGS:
                self.settings_frame(clock())

        return spend


def header_bound(max_request_headers: int) -> int:
    """Where HPACK decoding and the buffering of one header block stop (a connection error)."""
    return max(HEADER_LIMIT_FACTOR * max_request_headers, HEADER_BOUND_FLOOR)


def guarded_connection(max_request_headers: int) -> H2Connection:
    """The server side's codec, with the limits above that the codec enforces itself, and the
    receive windows of `h2_body`."""
    bound = header_bound(max_request_headers)
    return H2Connection(
        client=False,
        initial_window=STREAM_WINDOW,
        connection_window=CONNECTION_WINDOW,
        max_concurrent_streams=MAX_CONCURRENT_STREAMS,
        stream_hard_limit=STREAM_HARD_LIMIT,
        advertised_header_list=max_request_headers,
        max_header_list=bound,
        max_header_block=bound,
    )
