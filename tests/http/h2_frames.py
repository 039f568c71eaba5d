"""Raw HTTP/2 frames for the codec's tests: built byte by byte (so any rule can be broken) and read back
as `(type, flags, stream_id, payload)` tuples."""

from __future__ import annotations

import struct

import hpack

from sidecar.http.h2_conn import PREFACE, H2Connection

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"orders"), (b":path", b"/")]
RESPONSE = [(b":status", b"200")]


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">L", len(payload))[1:] + bytes((frame_type, flags)) + struct.pack(">L", stream_id) + payload


def settings(*pairs: tuple[int, int], ack: bool = False) -> bytes:
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HL", k, v) for k, v in pairs))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment))


def rst(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">L", code))


def ping(data: bytes = b"12345678", ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data)


def goaway(last: int, code: int = 0, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">LL", last, code) + debug)


class Frames:
    """A peer's HPACK encoder and frame helpers."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def block(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        return self.encoder.encode(fields)

    def headers(
        self,
        stream_id: int,
        fields: list[tuple[bytes, bytes]],
        *,
        end_stream: bool = True,
        end_headers: bool = True,
        flags: int = 0,
    ) -> bytes:
        flags |= (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        return frame(HEADERS, flags, stream_id, self.block(fields))


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames in `data` (a client preface first is skipped)."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    frames = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        frame_type, flags = data[pos + 3], data[pos + 4]
        stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        frames.append((frame_type, flags, stream_id, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return frames


def resets(data: bytes) -> dict[int, int]:
    return {sid: int.from_bytes(p, "big") for t, _, sid, p in parse(data) if t == RST_STREAM}


def goaway_code(data: bytes) -> int | None:
    codes = [int.from_bytes(p[4:8], "big") for t, _, _, p in parse(data) if t == GOAWAY]
    return codes[-1] if codes else None


def server(**options: int) -> H2Connection:
    """A server connection past the preface and both SETTINGS frames."""
    conn = H2Connection(client=False, **options)  # type: ignore[arg-type]
    conn.initiate()
    conn.receive(PREFACE + settings() + settings(ack=True))
    conn.data_to_send()
    return conn


def client(**options: int) -> H2Connection:
    """A client connection past both SETTINGS frames."""
    conn = H2Connection(client=True, **options)  # type: ignore[arg-type]
    conn.initiate()
    conn.receive(settings() + settings(ack=True))
    conn.data_to_send()
    return conn
