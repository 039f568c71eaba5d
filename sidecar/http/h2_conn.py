"""`H2Connection`: one HTTP/2 connection's state machine (RFC 9113), server or client side, sans-IO.

Bytes in, events out: `receive(data)` parses every complete frame and returns what happened as a
list of tuples, `(kind, stream_id, ...)` with `kind` one of the event constants below. The send
methods (`send_headers`, `send_data`, `end_stream`, `reset`, `ping`, `goaway`, `acknowledge`) queue
frames; `data_to_send()` takes them. No I/O, no clock, no trio.

What it owns:

- **Frames.** The nine frame types and CONTINUATION, parsed and built here (unknown types are
  ignored, PRIORITY is parsed and ignored, PUSH_PROMISE is a PROTOCOL_ERROR since push is never
  enabled); padding; our SETTINGS_MAX_FRAME_SIZE on what we receive and the peer's on what we send;
  the client preface; the first frame each way being SETTINGS.
- **Streams.** Stream ids (parity, monotonic), the idle / open / half-closed / closed states and the
  errors §5.1 prescribes: a stream error resets that stream (RST_STREAM), a connection error raises
  `H2ConnectionError` after queuing GOAWAY. A stream's state is the two flags `local_ended` and
  `remote_ended`; it leaves `streams` once both are set or it is reset, and the way it closed is
  remembered for the last `CLOSED_MEMORY` streams or so, to tell frames still in flight (ignored)
  from a peer's mistake (STREAM_CLOSED).
- **Flow control**, both directions, for the connection and each stream: the peer's WINDOW_UPDATE and
  SETTINGS_INITIAL_WINDOW_SIZE (applied to open streams) on the send side, overflow checks; on the
  receive side the windows the peer must respect, with credit returned by `acknowledge()` as the
  application reads, in WINDOW_UPDATE frames batched to half a window.
- **Headers.** HPACK through `hpack_codec`, received blocks validated by `h2_fields` (malformed: a
  stream error), Content-Length checked against the DATA received, informational responses and
  trailers told apart.
- **Limits against a hostile peer.** Streams past our SETTINGS_MAX_CONCURRENT_STREAMS are refused
  (REFUSED_STREAM, event `STREAM_REFUSED`); a peer that has `stream_hard_limit` streams open or
  refused since one last closed is told PROTOCOL_ERROR. A header block buffered across CONTINUATION
  frames stops at `max_header_block` bytes and `MAX_CONTINUATIONS` frames, a decoded header list at
  `max_header_list` bytes. `frame_guard`, when set, is called with the type of each SETTINGS and
  PING frame before it is handled: the abuse guard's budget raises there, in the middle of a read,
  before the frame costs anything.

Connection errors carry an abuse `reason` when they are one (`continuation_flood`, `hpack_bomb`,
`too_many_streams`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any

from .h2_fields import Malformed, check_request, check_response, check_trailers
from .hpack_codec import CompressionError, HeaderDecoder, HeaderEncoder, HeaderListTooLarge

__all__ = [
    "CLOSED_MEMORY",
    "CONTINUATION",
    "DATA",
    "DATA_RECEIVED",
    "GOAWAY",
    "GOAWAY_RECEIVED",
    "HEADERS",
    "HEADERS_RECEIVED",
    "INFORMATIONAL_RECEIVED",
    "MAX_CONTINUATIONS",
    "PING",
    "PING_ACKED",
    "PING_RECEIVED",
    "PREFACE",
    "PRIORITY",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "SETTINGS_RECEIVED",
    "STREAM_REFUSED",
    "STREAM_RESET",
    "TRAILERS_RECEIVED",
    "WINDOW_OPENED",
    "WINDOW_UPDATE",
    "ErrorCode",
    "H2Connection",
    "H2ConnectionError",
    "H2StateError",
    "Setting",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20


class ErrorCode(IntEnum):
    """RFC 9113 §7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(IntEnum):
    """RFC 9113 §6.5.2 (and RFC 8441's ENABLE_CONNECT_PROTOCOL)."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6
    ENABLE_CONNECT_PROTOCOL = 0x8


_PROTOCOL_ERROR = ErrorCode.PROTOCOL_ERROR
_FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR
_FRAME_SIZE_ERROR = ErrorCode.FRAME_SIZE_ERROR
_STREAM_CLOSED = ErrorCode.STREAM_CLOSED

# Events: the first item of each event tuple; the second is always the stream id (0: the connection).
HEADERS_RECEIVED = 1
"""(kind, stream_id, headers, end_stream, list_size): a request (server side) or a final response
(client side); `list_size` is the decoded header list's size as RFC 9113 §6.5.2 counts it."""
INFORMATIONAL_RECEIVED = 2
"""(kind, stream_id, headers): a 1xx response (client side)."""
TRAILERS_RECEIVED = 3
"""(kind, stream_id, headers, list_size): trailers; the stream's remote side has ended."""
DATA_RECEIVED = 4
"""(kind, stream_id, data, flow_controlled_length, end_stream): pass `flow_controlled_length` to
`acknowledge()` once `data` is consumed (0 when there is nothing to acknowledge)."""
STREAM_RESET = 5
"""(kind, stream_id, error_code, by_peer): the stream is closed, by the peer's RST_STREAM or by a
stream error we detected (and answered with RST_STREAM)."""
WINDOW_OPENED = 6
"""(kind, stream_id): more send window for the stream; stream 0: for the connection, or every stream
(SETTINGS_INITIAL_WINDOW_SIZE changed)."""
SETTINGS_RECEIVED = 7
"""(kind, 0, {setting: value}): the peer's SETTINGS, applied and acknowledged."""
PING_RECEIVED = 8
"""(kind, 0, opaque_data): answered already."""
PING_ACKED = 9
"""(kind, 0, opaque_data)."""
GOAWAY_RECEIVED = 10
"""(kind, 0, last_stream_id, error_code, debug_data)."""
STREAM_REFUSED = 11
"""(kind, stream_id): a stream past our MAX_CONCURRENT_STREAMS, refused with REFUSED_STREAM."""

Event = tuple[Any, ...]
Header = tuple[bytes, bytes]

DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
DEFAULT_FRAME_SIZE = 16384
MAX_FRAME_SIZE = 2**24 - 1
MAX_STREAM_ID = 2**31 - 1
MAX_CONTINUATIONS = 64
"""CONTINUATION frames one header block may take (an empty-frame flood costs no bytes)."""
CLOSED_MEMORY = 256
"""Closed streams remembered (at least this many, at most twice), to tell a frame in flight when a
stream closed from a peer's error."""

_FRAME_HEADER = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, stream id
_pack_header = _FRAME_HEADER.pack
_unpack_header = _FRAME_HEADER.unpack_from
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")

# How a stream closed (the values of `_closed`).
_ENDED = 0  # both sides sent END_STREAM
_RESET_BY_US = 1
_RESET_BY_PEER = 2


class H2ConnectionError(Exception):
    """The peer broke the protocol: GOAWAY `code` is queued, and the connection is over."""

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.reason = reason


class H2StateError(Exception):
    """The application asked for something the connection's state does not allow (sending on a
    closed stream, past the flow-control window, a stream past the peer's limit)."""


class _StreamError(Exception):
    """Raised inside frame handling: reset this stream with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """The state of one open stream."""

    __slots__ = (
        "expected_length",
        "head_received",
        "local_ended",
        "no_body",
        "received",
        "recv_window",
        "remote_ended",
        "send_window",
        "unacknowledged",
    )

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.local_ended = False
        self.remote_ended = False
        self.head_received = False  # the request, or the final response: DATA may follow
        self.send_window = send_window
        self.recv_window = recv_window  # what the peer may still send
        self.unacknowledged = 0  # consumed since the last WINDOW_UPDATE
        self.expected_length = -1  # declared Content-Length, -1 when none
        self.received = 0
        self.no_body = False  # a response to HEAD (client side): Content-Length says nothing of DATA


class H2Connection:
    """One HTTP/2 connection (see the module docstring)."""

    def __init__(
        self,
        *,
        client: bool,
        max_concurrent_streams: int | None = None,
        stream_hard_limit: int | None = None,
        initial_window: int = DEFAULT_WINDOW,
        connection_window: int = DEFAULT_WINDOW,
        max_header_list: int = 65536,
        advertised_header_list: int | None = None,
        max_header_block: int = 65536,
    ) -> None:
        if initial_window < DEFAULT_WINDOW or connection_window < DEFAULT_WINDOW:
            raise ValueError("windows below the protocol default are not supported")
        self.client = client
        self.streams: dict[int, Stream] = {}
        self._closed: dict[int, int] = {}  # how recent streams closed, in two generations of
        self._closed_before: dict[int, int] = {}  # up to CLOSED_MEMORY each: no per-close eviction
        self._out: list[bytes | memoryview] = []
        self._events: list[Event] = []
        self._pending = bytearray()  # an incomplete frame (or preface), waiting for more bytes
        self._need = 0
        self._preface_left = b"" if client else PREFACE  # what the server still expects of it
        self._settings_first = True  # the peer's first frame must be SETTINGS
        self.closed = False  # a connection error happened: nothing more is read
        self.frame_guard: Callable[[int], None] | None = None
        # Stream ids.
        self._peer_parity = 0 if client else 1  # odd ids are the client's
        self.highest_peer_stream = 0
        self.next_stream_id = 1 if client else 2
        self.open_inbound = 0
        self.open_outbound = 0
        self._refused_run = 0  # streams refused since an inbound stream last closed
        # Our settings: sent once in initiate(), never changed.
        self.local_max_streams = max_concurrent_streams
        self.stream_hard_limit = stream_hard_limit if stream_hard_limit is not None else MAX_STREAM_ID
        self.local_initial_window = initial_window
        self.local_max_frame = DEFAULT_FRAME_SIZE
        self._advertised_header_list = advertised_header_list
        self.max_header_block = max_header_block
        self._connection_window = connection_window
        # The peer's settings.
        self.peer_max_streams = MAX_STREAM_ID
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME_SIZE
        # Windows.
        self.send_connection_window = DEFAULT_WINDOW
        self.recv_connection_window = connection_window  # counted from initiate(), which grows it
        self._connection_unacknowledged = 0
        # Header blocks.
        self.decoder = HeaderDecoder(max_header_list)
        self.encoder = HeaderEncoder()
        self._block_stream = 0  # a block waiting for CONTINUATION: its stream, 0 when none
        self._block_parts: list[bytes] = []
        self._block_size = 0
        self._block_end_stream = False
        self._block_bad_priority = False
        # GOAWAY.
        self.goaway_sent = False
        self.goaway_received = False
        self.peer_last_stream = MAX_STREAM_ID
        self._handlers: tuple[Callable[[int, int, bytes], None], ...] = (
            self._on_data,
            self._on_headers,
            self._on_priority,
            self._on_rst_stream,
            self._on_settings,
            self._on_push_promise,
            self._on_ping,
            self._on_goaway,
            self._on_window_update,
            self._on_continuation,
        )

    # -- output ------------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the connection's opening: the client preface, then our SETTINGS (and a WINDOW_UPDATE
        when the connection window is larger than the default)."""
        settings: list[tuple[int, int]] = []
        if self.client:
            self._out.append(PREFACE)
            settings.append((Setting.ENABLE_PUSH, 0))
        if self.local_max_streams is not None:
            settings.append((Setting.MAX_CONCURRENT_STREAMS, self.local_max_streams))
        if self.local_initial_window != DEFAULT_WINDOW:
            settings.append((Setting.INITIAL_WINDOW_SIZE, self.local_initial_window))
        if self._advertised_header_list is not None:
            settings.append((Setting.MAX_HEADER_LIST_SIZE, self._advertised_header_list))
        payload = b"".join(_SETTING.pack(code, value) for code, value in settings)
        self._frame(SETTINGS, 0, 0, payload)
        if self._connection_window > DEFAULT_WINDOW:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._connection_window - DEFAULT_WINDOW))

    def data_to_send(self) -> bytes:
        """Everything queued since the last call."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    def _frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes | memoryview) -> None:
        length = len(payload)
        out = self._out
        out.append(_pack_header(length >> 8, length & 0xFF, frame_type, flags, stream_id))
        if length:
            out.append(payload)

    # -- sending on streams ------------------------------------------------------------------------

    def new_stream_id(self) -> int:
        """The id the client's next request takes (it opens with `send_headers`)."""
        stream_id = self.next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise H2StateError("no stream ids left on this connection")
        if self.goaway_received and stream_id > self.peer_last_stream:
            raise H2StateError("the peer sent GOAWAY")
        return stream_id

    def send_headers(self, stream_id: int, headers: Sequence[Sequence[bytes]], end_stream: bool = False) -> None:
        """Queue a header block: a request (client side, opening the stream), a response, or trailers
        (with `end_stream`). The fields are sent as given: they come from validated messages."""
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self._open_local(stream_id, headers)
        elif stream.local_ended:
            raise H2StateError(f"stream {stream_id} is closed for sending")
        block = self.encoder.encode(headers)
        flags = FLAG_END_STREAM if end_stream else 0
        max_frame = self.peer_max_frame
        if len(block) <= max_frame:
            self._frame(HEADERS, flags | FLAG_END_HEADERS, stream_id, block)
        else:
            view = memoryview(block)
            self._frame(HEADERS, flags, stream_id, view[:max_frame])
            for start in range(max_frame, len(block), max_frame):
                last = start + max_frame >= len(block)
                self._frame(CONTINUATION, FLAG_END_HEADERS if last else 0, stream_id, view[start : start + max_frame])
        if end_stream:
            self._end_local(stream_id, stream)

    def _open_local(self, stream_id: int, headers: Sequence[Sequence[bytes]]) -> Stream:
        if not self.client or stream_id != self.new_stream_id():
            raise H2StateError(f"stream {stream_id} is not open")
        if self.open_outbound >= self.peer_max_streams:
            raise H2StateError("the peer's MAX_CONCURRENT_STREAMS is reached")
        stream = Stream(self.peer_initial_window, self.local_initial_window)
        for header in headers:
            if header[0] == b":method":
                stream.no_body = header[1] == b"HEAD"
                break
        self.streams[stream_id] = stream
        self.next_stream_id = stream_id + 2
        self.open_outbound += 1
        return stream

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        """Queue DATA (split to the peer's frame size); `data` must fit `send_window(stream_id)`."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_ended:
            raise H2StateError(f"stream {stream_id} is closed for sending")
        size = len(data)
        if size and (size > stream.send_window or size > self.send_connection_window):
            raise H2StateError(f"{size} bytes do not fit the flow-control window")
        stream.send_window -= size
        self.send_connection_window -= size
        max_frame = self.peer_max_frame
        flags = FLAG_END_STREAM if end_stream else 0
        if size <= max_frame:
            self._frame(DATA, flags, stream_id, data)
        else:
            view = memoryview(data)
            for start in range(0, size, max_frame):
                last = start + max_frame >= size
                self._frame(DATA, flags if last else 0, stream_id, view[start : start + max_frame])
        if end_stream:
            self._end_local(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        """Queue an empty DATA frame with END_STREAM."""
        self.send_data(stream_id, b"", end_stream=True)

    def send_window(self, stream_id: int) -> int:
        """How many bytes of DATA the stream may send now (0 when closed)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_ended:
            return 0
        window = stream.send_window
        return window if window < self.send_connection_window else self.send_connection_window

    def reset(self, stream_id: int, code: int = ErrorCode.CANCEL) -> bool:
        """Reset an open stream (RST_STREAM); False, and nothing sent, when it is not open."""
        if stream_id not in self.streams:
            return False
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(code))
        self._close(stream_id, _RESET_BY_US)
        return True

    def ping(self, opaque_data: bytes = b"\0" * 8) -> None:
        if len(opaque_data) != 8:
            raise ValueError("PING carries 8 bytes")
        self._frame(PING, 0, 0, opaque_data)

    def goaway(self, code: int = ErrorCode.NO_ERROR, last_stream_id: int | None = None, debug: bytes = b"") -> None:
        """Queue GOAWAY; `last_stream_id` defaults to the highest stream the peer opened."""
        last = self.highest_peer_stream if last_stream_id is None else last_stream_id
        self._frame(GOAWAY, 0, 0, _GOAWAY.pack(last, code) + debug)
        self.goaway_sent = True

    def acknowledge(self, stream_id: int, size: int) -> None:
        """`size` flow-controlled bytes of the stream were consumed: the peer may send as much again.
        Credit goes back in WINDOW_UPDATE frames once half a window is owed (the connection's credit
        even when the stream has closed since)."""
        if size <= 0:
            return
        owed = self._connection_unacknowledged + size
        if owed >= self._connection_window >> 1:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(owed))
            self.recv_connection_window += owed
            owed = 0
        self._connection_unacknowledged = owed
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_ended:
            return
        owed = stream.unacknowledged + size
        if owed >= self.local_initial_window >> 1:
            self._frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(owed))
            stream.recv_window += owed
            owed = 0
        stream.unacknowledged = owed

    # -- stream state ------------------------------------------------------------------------------

    def _end_local(self, stream_id: int, stream: Stream) -> None:
        stream.local_ended = True
        if stream.remote_ended:
            self._close(stream_id, _ENDED)

    def _end_remote(self, stream_id: int, stream: Stream) -> None:
        stream.remote_ended = True
        if stream.local_ended:
            self._close(stream_id, _ENDED)

    def _close(self, stream_id: int, how: int) -> None:
        if self.streams.pop(stream_id, None) is None:
            return
        if stream_id & 1 == self._peer_parity:
            self.open_inbound -= 1
            self._refused_run = 0
        else:
            self.open_outbound -= 1
        self._remember(stream_id, how)

    def _remember(self, stream_id: int, how: int) -> None:
        closed = self._closed
        closed[stream_id] = how
        if len(closed) >= CLOSED_MEMORY:
            self._closed_before = closed
            self._closed = {}

    def _how_closed(self, stream_id: int) -> int | None:
        how = self._closed.get(stream_id)
        return self._closed_before.get(stream_id) if how is None else how

    def _is_idle(self, stream_id: int) -> bool:
        """Never opened (by either side): higher than the last stream of its parity."""
        if stream_id & 1 == self._peer_parity:
            return stream_id > self.highest_peer_stream
        return stream_id >= self.next_stream_id

    def _stream_error(self, stream_id: int, code: int) -> None:
        """Reset the stream for the peer's error, and tell the application when it knew of it."""
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(code))
        if stream_id in self.streams:
            self._close(stream_id, _RESET_BY_US)
            self._events.append((STREAM_RESET, stream_id, ErrorCode(code), False))
        else:
            self._remember(stream_id, _RESET_BY_US)

    def _connection_error(self, code: int, message: str, reason: str | None = None) -> H2ConnectionError:
        """Queue GOAWAY and end the connection; the caller raises what this returns."""
        if not self.closed:
            self.closed = True
            self.goaway(code)
        return H2ConnectionError(code, message, reason)

    # -- input -------------------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray) -> list[Event]:
        """Handle the bytes received; the events they made. Raises `H2ConnectionError` (GOAWAY queued)
        when the peer broke the protocol; after that, nothing more is read."""
        if self.closed:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        pending = self._pending
        if pending:
            pending += data
            if len(pending) < self._need:
                return []
            data = bytes(pending)
            pending.clear()
        events: list[Event] = []
        self._events = events
        pos = 0
        if self._preface_left:
            pos = self._read_preface(data)
            if self._preface_left:
                return events
        size = len(data)
        handlers = self._handlers
        max_frame = self.local_max_frame
        while size - pos >= 9:
            high, low, frame_type, flags, stream_id = _unpack_header(data, pos)
            length = (high << 8) | low
            if length > max_frame:
                raise self._connection_error(_FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = pos + 9 + length
            if end > size:
                self._need = end - pos
                break
            payload = data[pos + 9 : end]
            pos = end
            stream_id &= MAX_STREAM_ID
            if self._block_stream and frame_type != CONTINUATION:
                raise self._connection_error(_PROTOCOL_ERROR, "a header block interrupted by another frame")
            if self._settings_first:
                if frame_type != SETTINGS or flags & FLAG_ACK:
                    raise self._connection_error(_PROTOCOL_ERROR, "the first frame is not SETTINGS")
                self._settings_first = False
            if frame_type < 10:
                handlers[frame_type](stream_id, flags, payload)
        else:
            self._need = 9
        if pos < size:
            pending += data[pos:] if pos else data
        return events

    def _read_preface(self, data: bytes) -> int:
        """Match the client preface (server side); its bytes may come in pieces."""
        expected = self._preface_left
        piece = data[: len(expected)]
        if not expected.startswith(piece):
            raise self._connection_error(_PROTOCOL_ERROR, "invalid connection preface")
        self._preface_left = expected[len(piece) :]
        return len(piece)

    # -- frames ------------------------------------------------------------------------------------

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise self._connection_error(_PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        self.recv_connection_window -= length
        if self.recv_connection_window < 0:
            raise self._connection_error(_FLOW_CONTROL_ERROR, "DATA past the connection window")
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_ended:
            self.acknowledge(0, length)  # nobody reads it: the connection's window comes back at once
            self._frame_on_closed(stream_id, stream, DATA)
            return
        data = payload
        if flags & FLAG_PADDED:
            data = self._unpad(payload)
        try:
            stream.recv_window -= length
            if stream.recv_window < 0:
                raise _StreamError(_FLOW_CONTROL_ERROR, "DATA past the stream window")
            if not stream.head_received:
                raise _StreamError(_PROTOCOL_ERROR, "DATA before the head")
            end = flags & FLAG_END_STREAM
            if stream.expected_length >= 0:
                received = stream.received = stream.received + len(data)
                if received > stream.expected_length or (end and received != stream.expected_length):
                    raise _StreamError(_PROTOCOL_ERROR, "DATA does not match Content-Length")
        except _StreamError as error:
            self.acknowledge(0, length)
            self._stream_error(stream_id, error.code)
            return
        if end:
            self._end_remote(stream_id, stream)
        if data:
            self._events.append((DATA_RECEIVED, stream_id, data, length, bool(end)))
        else:
            self.acknowledge(0, length)  # padding only: nothing for the application to consume
            if end:
                self._events.append((DATA_RECEIVED, stream_id, b"", 0, True))

    def _unpad(self, payload: bytes) -> bytes:
        if not payload:
            raise self._connection_error(_FRAME_SIZE_ERROR, "padded frame without a pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise self._connection_error(_PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - pad]

    def _frame_on_closed(self, stream_id: int, stream: Stream | None, frame_type: int) -> None:
        """DATA or HEADERS on a stream that is not open for them (§5.1)."""
        if stream is not None:  # half-closed (remote)
            self._stream_error(stream_id, _STREAM_CLOSED)
            return
        if self._is_idle(stream_id):
            raise self._connection_error(_PROTOCOL_ERROR, f"frame type {frame_type} on idle stream {stream_id}")
        how = self._how_closed(stream_id)
        if how == _ENDED:
            raise self._connection_error(_STREAM_CLOSED, f"frame type {frame_type} on ended stream {stream_id}")
        if how == _RESET_BY_PEER:
            self._frame(RST_STREAM, 0, stream_id, _U32.pack(_STREAM_CLOSED))
        # Reset by us (frames in flight), or closed too long ago to know: ignored.

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise self._connection_error(_PROTOCOL_ERROR, "HEADERS on stream 0")
        start = 0
        end = len(payload)
        if flags & FLAG_PADDED:
            if not payload:
                raise self._connection_error(_FRAME_SIZE_ERROR, "padded frame without a pad length")
            start = 1
            end -= payload[0]
        bad_priority = False
        if flags & FLAG_PRIORITY:
            if end - start < 5:
                raise self._connection_error(_FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            bad_priority = _U32.unpack_from(payload, start)[0] & MAX_STREAM_ID == stream_id
            start += 5
        if end < start:
            raise self._connection_error(_PROTOCOL_ERROR, "padding longer than the frame")
        fragment = payload[start:end] if start or end != len(payload) else payload
        if flags & FLAG_END_HEADERS:
            self._header_block(stream_id, fragment, bool(flags & FLAG_END_STREAM), bad_priority)
            return
        self._block_stream = stream_id
        self._block_parts = [fragment]
        self._block_size = len(fragment)
        self._block_end_stream = bool(flags & FLAG_END_STREAM)
        self._block_bad_priority = bad_priority
        self._check_block_size()

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not self._block_stream or stream_id != self._block_stream:
            raise self._connection_error(_PROTOCOL_ERROR, "CONTINUATION without a header block before it")
        self._block_parts.append(payload)
        self._block_size += len(payload)
        self._check_block_size()
        if len(self._block_parts) > MAX_CONTINUATIONS:
            raise self._connection_error(_PROTOCOL_ERROR, "too many CONTINUATION frames", "continuation_flood")
        if flags & FLAG_END_HEADERS:
            block = b"".join(self._block_parts)
            self._block_stream = 0
            self._block_parts = []
            self._header_block(stream_id, block, self._block_end_stream, self._block_bad_priority)

    def _check_block_size(self) -> None:
        if self._block_size > self.max_header_block:
            raise self._connection_error(
                ErrorCode.ENHANCE_YOUR_CALM, f"header block over {self.max_header_block} bytes", "continuation_flood"
            )

    def _decode(self, block: bytes) -> list[Header]:
        try:
            return self.decoder.decode(block)
        except CompressionError as exc:
            raise self._connection_error(ErrorCode.COMPRESSION_ERROR, str(exc)) from None
        except HeaderListTooLarge as exc:
            raise self._connection_error(ErrorCode.ENHANCE_YOUR_CALM, str(exc), "hpack_bomb") from None

    def _header_block(self, stream_id: int, block: bytes, end_stream: bool, bad_priority: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id & 1 == self._peer_parity and stream_id > self.highest_peer_stream:
                if self.client:
                    raise self._connection_error(_PROTOCOL_ERROR, "the server opened a stream")
                self._new_peer_stream(stream_id, block, end_stream, bad_priority)
                return
            if self._is_idle(stream_id):
                raise self._connection_error(_PROTOCOL_ERROR, f"HEADERS on idle stream {stream_id}")
        headers = self._decode(block)  # whatever becomes of the stream, the HPACK context moves on
        if stream is None or stream.remote_ended:
            self._frame_on_closed(stream_id, stream, HEADERS)
            return
        try:
            if bad_priority:
                raise _StreamError(_PROTOCOL_ERROR, "stream depends on itself")
            if self.client:
                self._response_block(stream_id, stream, headers, end_stream)
            else:
                self._trailers(stream_id, stream, headers, end_stream)
        except Malformed:
            self._stream_error(stream_id, _PROTOCOL_ERROR)
        except _StreamError as error:
            self._stream_error(stream_id, error.code)

    def _new_peer_stream(self, stream_id: int, block: bytes, end_stream: bool, bad_priority: bool) -> None:
        """A request opens stream `stream_id` (server side)."""
        self.highest_peer_stream = stream_id
        limit = self.local_max_streams
        if limit is not None and self.open_inbound >= limit:
            if self.open_inbound + self._refused_run >= self.stream_hard_limit:
                raise self._connection_error(_PROTOCOL_ERROR, "streams far past the limit", "too_many_streams")
            self._refused_run += 1
            self._decode(block)
            self._frame(RST_STREAM, 0, stream_id, _U32.pack(ErrorCode.REFUSED_STREAM))
            self._remember(stream_id, _RESET_BY_US)
            self._events.append((STREAM_REFUSED, stream_id))
            return
        headers = self._decode(block)
        try:
            if bad_priority:
                raise Malformed("stream depends on itself")
            headers, _, length = check_request(headers)
        except Malformed:
            self._stream_error(stream_id, _PROTOCOL_ERROR)
            return
        stream = Stream(self.peer_initial_window, self.local_initial_window)
        stream.head_received = True
        stream.remote_ended = end_stream
        if length >= 0:
            if end_stream and length:
                self._stream_error(stream_id, _PROTOCOL_ERROR)
                return
            stream.expected_length = length
        self.streams[stream_id] = stream
        self.open_inbound += 1
        self._events.append((HEADERS_RECEIVED, stream_id, headers, end_stream, self.decoder.list_size))

    def _trailers(self, stream_id: int, stream: Stream, headers: list[Header], end_stream: bool) -> None:
        """A header block after the head: trailers, which end the stream (either side)."""
        if not end_stream:
            raise _StreamError(_PROTOCOL_ERROR, "trailers without END_STREAM")
        headers = check_trailers(headers)
        if stream.expected_length >= 0 and stream.received != stream.expected_length:
            raise _StreamError(_PROTOCOL_ERROR, "DATA does not match Content-Length")
        self._end_remote(stream_id, stream)
        self._events.append((TRAILERS_RECEIVED, stream_id, headers, self.decoder.list_size))

    def _response_block(self, stream_id: int, stream: Stream, headers: list[Header], end_stream: bool) -> None:
        """A header block on a request stream (client side): informational, final, or trailers."""
        if stream.head_received:
            self._trailers(stream_id, stream, headers, end_stream)
            return
        status, length = check_response(headers)
        if status < 200:
            if status == 101 or end_stream:
                raise _StreamError(_PROTOCOL_ERROR, "invalid informational response")
            self._events.append((INFORMATIONAL_RECEIVED, stream_id, headers))
            return
        stream.head_received = True
        if length >= 0 and not stream.no_body and status != 204 and status != 304:
            if end_stream and length:
                raise _StreamError(_PROTOCOL_ERROR, "DATA does not match Content-Length")
            stream.expected_length = length
        if end_stream:
            self._end_remote(stream_id, stream)
        self._events.append((HEADERS_RECEIVED, stream_id, headers, end_stream, self.decoder.list_size))

    def _on_priority(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise self._connection_error(_PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            if stream_id in self.streams:
                self._stream_error(stream_id, _FRAME_SIZE_ERROR)
                return
            raise self._connection_error(_FRAME_SIZE_ERROR, "PRIORITY of the wrong size")
        if _U32.unpack_from(payload)[0] & MAX_STREAM_ID == stream_id and stream_id in self.streams:
            self._stream_error(stream_id, _PROTOCOL_ERROR)

    def _on_rst_stream(self, stream_id: int, flags: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise self._connection_error(_FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if stream_id == 0:
            raise self._connection_error(_PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if stream_id not in self.streams:
            if self._is_idle(stream_id):
                raise self._connection_error(_PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return  # closed already: a reset crossing ours, or our END_STREAM
        code = _U32.unpack(payload)[0]
        self._close(stream_id, _RESET_BY_PEER)
        self._events.append((STREAM_RESET, stream_id, code, True))

    def _on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise self._connection_error(_PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise self._connection_error(_FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise self._connection_error(_FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        if self.frame_guard is not None:
            self.frame_guard(SETTINGS)
        changes: dict[int, int] = {}
        windows_moved = False
        for offset in range(0, len(payload), 6):
            code, value = _SETTING.unpack_from(payload, offset)
            windows_moved |= self._apply_setting(code, value)
            changes[code] = value
        self._frame(SETTINGS, FLAG_ACK, 0, b"")
        self._events.append((SETTINGS_RECEIVED, 0, changes))
        if windows_moved:
            self._events.append((WINDOW_OPENED, 0))

    def _apply_setting(self, code: int, value: int) -> bool:
        """Apply one of the peer's settings; True when it moved the streams' send windows."""
        if code == Setting.HEADER_TABLE_SIZE:
            self.encoder.peer_table_size(value)
        elif code == Setting.ENABLE_PUSH:
            if value > 1 or (self.client and value):
                raise self._connection_error(_PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
        elif code == Setting.MAX_CONCURRENT_STREAMS:
            self.peer_max_streams = value
        elif code == Setting.INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise self._connection_error(_FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
            delta = value - self.peer_initial_window
            self.peer_initial_window = value
            for stream in self.streams.values() if delta else ():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise self._connection_error(_FLOW_CONTROL_ERROR, "a stream window overflowed")
            return delta != 0
        elif code == Setting.MAX_FRAME_SIZE:
            if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE:
                raise self._connection_error(_PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
            self.peer_max_frame = value
        elif code == Setting.ENABLE_CONNECT_PROTOCOL and value > 1:
            raise self._connection_error(_PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_CONNECT_PROTOCOL")
        # MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored (§6.5.2).
        return False

    def _on_push_promise(self, stream_id: int, flags: int, payload: bytes) -> None:
        raise self._connection_error(_PROTOCOL_ERROR, "PUSH_PROMISE, and push is disabled")

    def _on_ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise self._connection_error(_PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise self._connection_error(_FRAME_SIZE_ERROR, "PING of the wrong size")
        if flags & FLAG_ACK:
            self._events.append((PING_ACKED, 0, payload))
            return
        if self.frame_guard is not None:
            self.frame_guard(PING)
        self._frame(PING, FLAG_ACK, 0, payload)
        self._events.append((PING_RECEIVED, 0, payload))

    def _on_goaway(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise self._connection_error(_PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise self._connection_error(_FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = _GOAWAY.unpack_from(payload)
        last &= MAX_STREAM_ID
        self.goaway_received = True
        if last < self.peer_last_stream:
            self.peer_last_stream = last
        self._events.append((GOAWAY_RECEIVED, 0, last, code, payload[8:]))

    def _on_window_update(self, stream_id: int, flags: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise self._connection_error(_FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _U32.unpack(payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if not increment:
                raise self._connection_error(_PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            window = self.send_connection_window = self.send_connection_window + increment
            if window > MAX_WINDOW:
                raise self._connection_error(_FLOW_CONTROL_ERROR, "the connection window overflowed")
            self._events.append((WINDOW_OPENED, 0))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise self._connection_error(_PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # closed: an update in flight
        if not increment:
            self._stream_error(stream_id, _PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, _FLOW_CONTROL_ERROR)
            return
        self._events.append((WINDOW_OPENED, stream_id))
