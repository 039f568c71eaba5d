"""`GoawayTap`: takes GOAWAY frames out of the bytes an HTTP/2 client receives, sans-IO.

RFC 9113 §6.8: after GOAWAY the server still answers the streams up to its last stream id; that is
how a draining sidecar lets requests in flight finish. The h2 library, though, closes its connection
state machine on a GOAWAY it receives and then rejects those very answers as protocol errors. So the
client connection passes every frame to h2 except GOAWAY, which it handles itself (no new streams on
the connection; streams above the last id were never processed and may be sent elsewhere).

The tap tracks frame boundaries without holding frames: only a frame header (9 bytes) or a GOAWAY
payload is ever buffered, and a GOAWAY payload at most up to `MAX_GOAWAY_PAYLOAD` (its debug data
beyond that is skipped, not kept).
"""

from __future__ import annotations

FRAME_HEADER = 9
GOAWAY = 0x7
MAX_GOAWAY_PAYLOAD = 8 + 1024  # last stream id, error code, and this much debug data is kept


class Goaway:
    __slots__ = ("error_code", "last_stream_id")

    def __init__(self, last_stream_id: int, error_code: int) -> None:
        self.last_stream_id = last_stream_id
        self.error_code = error_code


class GoawayTap:
    __slots__ = ("_goaway_left", "_head", "_passing", "_payload")

    def __init__(self) -> None:
        self._head = bytearray()  # a frame header being read
        self._passing = 0  # bytes of the current (non-GOAWAY) frame still to pass through
        self._goaway_left = 0  # bytes of the current GOAWAY frame still to read
        self._payload = bytearray()  # its payload, up to MAX_GOAWAY_PAYLOAD

    def feed(self, data: bytes | bytearray) -> tuple[bytes | bytearray, list[Goaway]]:
        """Split received bytes into what goes on to h2 and the GOAWAYs found."""
        if not self._head and not self._goaway_left and self._passing >= len(data):
            self._passing -= len(data)  # the common case: all of it inside one frame
            return data, []
        out = bytearray()
        found: list[Goaway] = []
        view = memoryview(data)
        while view:
            if self._passing:
                n = min(self._passing, len(view))
                out += view[:n]
                view = view[n:]
                self._passing -= n
            elif self._goaway_left:
                n = min(self._goaway_left, len(view))
                room = MAX_GOAWAY_PAYLOAD - len(self._payload)
                self._payload += view[: min(n, room)]
                view = view[n:]
                self._goaway_left -= n
                if not self._goaway_left:
                    found.append(self._parse_goaway())
            else:
                n = min(FRAME_HEADER - len(self._head), len(view))
                self._head += view[:n]
                view = view[n:]
                if len(self._head) == FRAME_HEADER:
                    self._start_frame(out, found)
        return bytes(out), found

    def _start_frame(self, out: bytearray, found: list[Goaway]) -> None:
        head = self._head
        length = int.from_bytes(head[:3], "big")
        on_connection = head[5:9] == b"\x00\x00\x00\x00"
        if head[3] == GOAWAY and length >= 8 and on_connection:
            self._goaway_left = length
            self._payload = bytearray()
        else:  # any other frame (or a malformed GOAWAY, for h2 to reject) passes through whole
            out += head
            self._passing = length
        self._head = bytearray()

    def _parse_goaway(self) -> Goaway:
        payload = self._payload
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        return Goaway(last, int.from_bytes(payload[4:8], "big"))
