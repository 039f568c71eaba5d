"""A raw HTTP/2 client for attack tests. Its frames are built by hand (hyperframe and hpack), so it can
break every rule h2's own client enforces (streams past the limit, endless CONTINUATION, floods), and
the server's frames are read back one by one, recorded by kind. It runs over any trio stream: a TCP
connection to a real sidecar, or one end of a memory stream pair."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import hpack
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawH2Peer:
    """The client side of one connection, speaking raw frames."""

    def __init__(self, stream: trio.abc.Stream, authority: bytes = b"orders") -> None:
        self.stream = stream
        self.authority = authority
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self._buffer = bytearray()
        self.closed = False  # the server closed the connection
        self.goaway: GoAwayFrame | None = None
        self.status: dict[int, int] = {}  # stream -> response status
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.body: dict[int, int] = {}  # stream -> DATA bytes received
        self.ended: set[int] = set()  # streams the server ended (END_STREAM)
        self.resets: dict[int, int] = {}  # stream -> RST_STREAM error code
        self.ping_acks = 0
        self.settings_acks = 0
        self.frames_received = 0
        self.window_credit = False  # give back window for every DATA frame received

    # -- sending ---------------------------------------------------------------------------------

    @staticmethod
    def opening(settings: dict[int, int] | None = None) -> bytes:
        """The connection preface and our SETTINGS."""
        return PREFACE + SettingsFrame(0, settings=settings or {}).serialize()

    async def start(self, settings: dict[int, int] | None = None) -> None:
        await self.stream.send_all(self.opening(settings))

    async def send(self, *frames: Frame) -> None:
        await self.stream.send_all(b"".join(f.serialize() for f in frames))

    def block(self, path: str = "/info", method: str = "GET", extra: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
        """An HPACK-encoded request header block."""
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", self.authority),
            (b":path", path.encode()),
            *extra,
        ]
        return self.encoder.encode(fields)

    def request(
        self,
        stream_id: int,
        path: str = "/info",
        *,
        end_stream: bool = True,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> HeadersFrame:
        flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
        return HeadersFrame(stream_id, self.block(path, extra=extra), flags=flags)

    def request_frames(
        self, stream_id: int, path: str = "/info", *, extra: Iterable[tuple[bytes, bytes]] = (), size: int = 16384
    ) -> list[Frame]:
        """A GET whose header block is split into HEADERS and CONTINUATION frames of `size` bytes."""
        block = self.block(path, extra=extra)
        pieces = [block[i : i + size] for i in range(0, len(block), size)]
        frames: list[Frame] = [HeadersFrame(stream_id, pieces[0], flags=["END_STREAM"])]
        frames += [ContinuationFrame(stream_id, piece) for piece in pieces[1:]]
        frames[-1].flags.add("END_HEADERS")
        return frames

    @staticmethod
    def reset(stream_id: int, error_code: int = 0x8) -> RstStreamFrame:
        return RstStreamFrame(stream_id, error_code=error_code)

    @staticmethod
    def ping(n: int = 0) -> PingFrame:
        return PingFrame(0, opaque_data=n.to_bytes(8, "big"))

    @staticmethod
    def continuation(stream_id: int, data: bytes, *, end: bool = False) -> ContinuationFrame:
        return ContinuationFrame(stream_id, data, flags=["END_HEADERS"] if end else [])

    @staticmethod
    def window_update(stream_id: int, increment: int) -> WindowUpdateFrame:
        return WindowUpdateFrame(stream_id, window_increment=increment)

    # -- receiving -------------------------------------------------------------------------------

    async def receive(self) -> None:
        """Read once and record every complete frame; sets `closed` at end of stream."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return
        self._buffer += data
        credit: list[Frame] = []
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
            del self._buffer[: 9 + length]
            self._record(frame)
            if self.window_credit and isinstance(frame, DataFrame) and frame.flow_controlled_length:
                n = frame.flow_controlled_length
                credit += [self.window_update(0, n), self.window_update(frame.stream_id, n)]
        if credit and not self.closed:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.send(*credit)

    def _record(self, frame: Frame) -> None:
        self.frames_received += 1
        if isinstance(frame, HeadersFrame):
            assert "END_HEADERS" in frame.flags, "the server split a header block"
            fields = dict(self.decoder.decode(frame.data, raw=True))
            if b":status" in fields and frame.stream_id not in self.status:
                self.status[frame.stream_id] = int(fields[b":status"])
                self.headers[frame.stream_id] = fields
        elif isinstance(frame, DataFrame):
            self.body[frame.stream_id] = self.body.get(frame.stream_id, 0) + len(frame.data)
        elif isinstance(frame, RstStreamFrame):
            self.resets[frame.stream_id] = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, PingFrame) and "ACK" in frame.flags:
            self.ping_acks += 1
        elif isinstance(frame, SettingsFrame) and "ACK" in frame.flags:
            self.settings_acks += 1
        if "END_STREAM" in frame.flags:
            self.ended.add(frame.stream_id)

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Receive until `condition()` holds; fails if the connection closes first or time runs out."""
        with trio.fail_after(timeout):
            while not condition():
                assert not self.closed, "the server closed the connection first"
                await self.receive()

    async def until_closed(self, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not self.closed:
                await self.receive()

    async def goaway_code(self, timeout: float = 10.0) -> int:
        """Receive until the server's GOAWAY and the end of the connection; its error code."""
        await self.until_closed(timeout)
        assert self.goaway is not None, "the connection closed without a GOAWAY"
        return self.goaway.error_code
