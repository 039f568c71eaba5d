"""The protocol matrix for failure tests: each pairing of downstream protocol (HTTP/1.1 or h2c, the
app's connection to sidecar A's outbound listener), hop between the two sidecars (`http1`, or `auto`:
HTTP/2 by ALPN, the default) and local app protocol behind sidecar B (`http1` or `h2c`).

- `Pairing` (conftest) names one combination; the `pairing` fixture runs a test over all eight.
- `MatrixPath` builds client -> sidecar A (outbound) -> sidecar B (inbound) -> app for a pairing.
- `H1Client` and `H2Client` speak the downstream protocol: h11 reads HTTP/1.1 responses, h2 drives
  HTTP/2 (state machines someone else wrote), and a request body follows a script of steps (bytes, a
  wait until the app has the request head or the echo of what was sent, a malformed piece, trailers,
  a stall, the client leaving).
- `RecordingApp` (ASGI under hypercorn, which speaks HTTP/1.1 and h2c on one port) records what
  reached the app and whether it saw the request end or vanish; `RudeApp` (h11 and h2 over raw
  sockets) resets, closes and answers garbage where a well-behaved server never would, and keeps the
  request trailers hypercorn drops.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import hypercorn.config
import hypercorn.trio
import trio

from .apps import lifespan
from .conftest import Mesh, Pairing, SidecarHandle, free_port, mesh_service

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTLE_TIMEOUT = 5.0  # seconds for counters to come back to rest after a failure
REPLY_TIMEOUT = 8.0  # an answer "at once": well below the request timeout the path is built with
REQUEST_TIMEOUT = "20s"  # sidecar A's request timeout: a failure waiting for it fails the test first


# --------------------------------------------------------------------------------------------------
# Request body scripts
# --------------------------------------------------------------------------------------------------


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


BAD = _Marker("BAD")  # a malformed piece: HTTP/1.1 a chunk size that is not hex; HTTP/2 DATA past content-length
STALL = _Marker("STALL")  # send nothing more, and do not leave
LEAVE = _Marker("LEAVE")  # the client goes away: HTTP/1.1 closes the connection, HTTP/2 resets the stream
RESPONSE_STARTED = _Marker("RESPONSE_STARTED")  # send nothing until the response head has arrived


@dataclass(frozen=True)
class Wait:
    """Send nothing until `until()` returns (e.g. the app has the request head)."""

    until: Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Trailers:
    """End the body with these trailer fields."""

    fields: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class BodyReceived:
    """Send nothing until `count` bytes of the response body have arrived (an echo of what was sent)."""

    count: int


Step = bytes | _Marker | Wait | Trailers | BodyReceived


@dataclass
class Reply:
    """What the client got back for one request."""

    status: int | None = None  # None: no response head
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    complete: bool = False  # the response ended as its framing says (not cut)
    reset: int | None = None  # HTTP/2: the error code of an RST_STREAM on the request's stream
    closed: bool = False  # the connection ended (HTTP/1.1 close; HTTP/2 close or GOAWAY) before the reply ended
    started: trio.Event = field(default_factory=trio.Event, repr=False)  # set when the head arrives

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-sidecar-reason")

    @property
    def cut(self) -> bool:
        """A response that started and was then cut short."""
        return self.status is not None and not self.complete

    async def body_received(self, count: int) -> None:
        """Wait until `count` bytes of the body have arrived (the exchange's deadline bounds it)."""
        while len(self.body) < count:
            await trio.sleep(0.01)


# --------------------------------------------------------------------------------------------------
# Downstream clients
# --------------------------------------------------------------------------------------------------


class H1Client:
    """One HTTP/1.1 connection; requests written as raw bytes (so they can be malformed), responses
    read by h11."""

    def __init__(self, port: int, authority: bytes = b"orders") -> None:
        self.port = port
        self.authority = authority
        self.stream: trio.SocketStream | None = None
        self.h11 = h11.Connection(h11.CLIENT)
        self.left = False

    async def connect(self) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def exchange(
        self,
        method: str = "GET",
        path: str = "/info",
        *,
        body: Sequence[Step] | None = None,
        length: int | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> Reply:
        """Send a request (a body framed by `length`, chunked when None) and read its reply."""
        assert self.stream is not None
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        fields = [(b"Host", self.authority), *headers]
        if body is not None:
            fields.append(
                (b"Content-Length", str(length).encode()) if length is not None else (b"Transfer-Encoding", b"chunked")
            )
        self.h11.send(h11.Request(method=method, target=path, headers=fields))  # h11 tracks the state only
        head = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
        reply = Reply()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_body, head, body, length is None, reply)
            await self._read_reply(reply)
            nursery.cancel_scope.cancel()
        return reply

    async def send_raw(self, data: bytes) -> Reply:
        """Send `data` as it is (a malformed request, say) and read the reply to it."""
        assert self.stream is not None
        self.h11.send(h11.Request(method=data.split(b" ", 1)[0], target="/", headers=[(b"Host", b"x")]))
        reply = Reply()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)
        await self._read_reply(reply)
        return reply

    async def _send_body(self, head: bytes, body: Sequence[Step] | None, chunked: bool, reply: Reply) -> None:
        assert self.stream is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(head)
            if body is None:
                return
            for step in body:
                if isinstance(step, bytes):
                    await self.stream.send_all(f"{len(step):x}\r\n".encode() + step + b"\r\n" if chunked else step)
                elif isinstance(step, Wait):
                    await step.until()
                elif step is RESPONSE_STARTED:
                    await reply.started.wait()
                elif isinstance(step, BodyReceived):
                    await reply.body_received(step.count)
                elif isinstance(step, Trailers):
                    assert chunked, "trailers need a chunked body"
                    await self.stream.send_all(
                        b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in step.fields) + b"\r\n"
                    )
                    return
                elif step is BAD:
                    assert chunked, "a malformed piece needs a chunked body"
                    await self.stream.send_all(b"zz\r\nhello\r\n")
                elif step is STALL:
                    await trio.sleep_forever()
                elif step is LEAVE:
                    self.left = True
                    await self.stream.aclose()
                    return
            if chunked:
                await self.stream.send_all(b"0\r\n\r\n")

    async def _read_reply(self, reply: Reply) -> None:
        assert self.stream is not None
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:  # the connection ended mid-response
                reply.closed = True
                return
            if event is h11.NEED_DATA:
                if self.left:
                    return
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                    if self.left:
                        return
                self.h11.receive_data(data)
                if not data and reply.status is None:
                    reply.closed = True
                    return
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                reply.status = event.status_code
                reply.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                reply.started.set()
            elif isinstance(event, h11.Data):
                reply.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                reply.trailers = {k.decode().lower(): v.decode() for k, v in event.headers}
                reply.complete = True
                return
            elif isinstance(event, h11.ConnectionClosed):
                reply.closed = True
                return

    async def closed(self, timeout: float = 5.0) -> bool:
        """Whether the sidecar closes the connection (within `timeout`) after the last reply."""
        assert self.stream is not None
        with trio.move_on_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return True
                if not data:
                    return True
        return False


class _H2Stream:
    def __init__(self) -> None:
        self.reply = Reply()
        self.done = trio.Event()


class H2Client:
    """One prior-knowledge h2c connection driven by the h2 library; many requests may share it."""

    def __init__(self, port: int, authority: bytes = b"orders") -> None:
        self.port = port
        self.authority = authority
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.stream: trio.SocketStream | None = None
        self.streams: dict[int, _H2Stream] = {}
        self.connection_ended = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._send_lock = trio.Lock()
        self._window = trio.Event()

    async def connect(self, nursery: trio.Nursery) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.h2.initiate_connection()
        await self._flush()
        nursery.start_soon(self._reader)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def _flush(self) -> None:
        assert self.stream is not None
        data = self.h2.data_to_send()
        if data:
            async with self._send_lock:
                await self.stream.send_all(data)

    async def _reader(self) -> None:
        assert self.stream is not None
        try:
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    return
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    return
                for event in events:
                    self._dispatch(event)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._flush()
        finally:
            self.connection_ended.set()
            for state in self.streams.values():
                if not state.done.is_set():
                    state.reply.closed = True
                    state.done.set()

    def _dispatch(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        state = self.streams.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived) and state is not None:
            fields = {k.decode().lower(): v.decode() for k, v in event.headers}
            state.reply.status = int(fields.pop(":status"))
            state.reply.headers = fields
            state.reply.started.set()
        elif isinstance(event, h2.events.DataReceived):
            if state is not None:
                state.reply.body += event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived) and state is not None:
            state.reply.trailers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h2.events.StreamEnded) and state is not None:
            state.reply.complete = True
            state.done.set()
        elif isinstance(event, h2.events.StreamReset) and state is not None:
            state.reply.reset = event.error_code
            state.done.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            for other in self.streams.values():
                if not other.done.is_set():
                    other.reply.closed = True
                    other.done.set()
        elif isinstance(event, h2.events.WindowUpdated):
            self._window.set()
            self._window = trio.Event()

    async def exchange(
        self,
        method: str = "GET",
        path: str = "/info",
        *,
        body: Sequence[Step] | None = None,
        length: int | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        fields: list[tuple[bytes, bytes]] | None = None,
    ) -> Reply:
        """Send a request on a new stream (with `content-length` when `length` is given) and read its
        reply; `fields` replaces the whole header block, pseudo-header fields included."""
        stream_id = self.h2.get_next_available_stream_id()
        state = self.streams[stream_id] = _H2Stream()
        if fields is None:
            fields = [
                (b":method", method.encode()),
                (b":scheme", b"http"),
                (b":authority", self.authority),
                (b":path", path.encode()),
                *headers,
            ]
        if length is not None:
            fields.append((b"content-length", str(length).encode()))
        self.h2.send_headers(stream_id, fields, end_stream=body is None)
        await self._flush()
        async with trio.open_nursery() as nursery:
            if body is not None:
                nursery.start_soon(self._send_body, stream_id, body, length, state.reply)
            await state.done.wait()
            nursery.cancel_scope.cancel()
        return state.reply

    async def _send_body(self, stream_id: int, body: Sequence[Step], length: int | None, reply: Reply) -> None:
        sent = 0
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.StreamClosedError):
            for step in body:
                if isinstance(step, bytes):
                    await self._send_data(stream_id, step)
                    sent += len(step)
                elif isinstance(step, Wait):
                    await step.until()
                elif step is RESPONSE_STARTED:
                    await reply.started.wait()
                elif isinstance(step, BodyReceived):
                    await reply.body_received(step.count)
                elif isinstance(step, Trailers):
                    self.h2.send_headers(stream_id, list(step.fields), end_stream=True)
                    await self._flush()
                    return
                elif step is BAD:  # more DATA than the content-length said: a malformed request
                    assert length is not None, "a malformed piece needs a content-length"
                    await self._send_data(stream_id, b"x" * (length - sent + 1))
                elif step is STALL:
                    await trio.sleep_forever()
                elif step is LEAVE:
                    self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    await self._flush()
                    self.streams[stream_id].done.set()
                    return
            self.h2.end_stream(stream_id)
            await self._flush()

    async def _send_data(self, stream_id: int, data: bytes) -> None:
        while data:
            window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if window <= 0:
                await self._window.wait()
                continue
            self.h2.send_data(stream_id, data[:window])
            data = data[window:]
            await self._flush()

    async def closed(self, timeout: float = 5.0) -> bool:
        with trio.move_on_after(timeout):
            await self.connection_ended.wait()
            return True
        return False


Client = H1Client | H2Client


# --------------------------------------------------------------------------------------------------
# Apps behind sidecar B
# --------------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the app saw it."""

    path: str
    received: int = 0
    ended: bool = False  # the whole request body arrived
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)  # the request's trailer fields
    gone: trio.Event = field(default_factory=trio.Event)  # the request vanished (disconnect, reset)
    finished: trio.Event = field(default_factory=trio.Event)  # the app is done with it, either way


class Recorder:
    """Arrivals by path, for tests that wait until the app has a request's head."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._arrived = trio.Event()

    def arrive(self, path: str) -> Seen:
        seen = Seen(path)
        self.seen.append(seen)
        self._arrived.set()
        self._arrived = trio.Event()
        return seen

    def of(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def arrived(self, path: str, count: int = 1) -> Seen:
        """The `count`-th request to `path`, once its head has reached the app."""
        while len(self.of(path)) < count:
            await self._arrived.wait()
        return self.of(path)[count - 1]

    def head_seen(self, path: str, count: int = 1) -> Wait:
        """A body step: wait until the app has the head of this request."""
        return Wait(partial(self.arrived, path, count))


class RecordingApp(Recorder):
    """A well-behaved app (ASGI, served by hypercorn over HTTP/1.1 and h2c on one port).

    /read    reads the whole body, then answers 200 with {"received": N}
    /echo    answers 200 at once and streams the body back
    /hold    never answers: waits until the request vanishes
    /info    answers 200 at once
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        seen = self.arrive(scope["path"])
        try:
            await self._serve(seen, receive, send)
        finally:
            seen.finished.set()

    async def _serve(self, seen: Seen, receive: Any, send: Any) -> None:
        path = seen.path

        async def body() -> bool:
            """Read the request body to its end; False when the request vanished."""
            while not seen.ended:
                message = await receive()
                if message["type"] == "http.disconnect":
                    seen.gone.set()
                    return False
                seen.received += len(message.get("body", b""))
                seen.ended = not message.get("more_body", False)
            return True

        if path == "/hold":
            while True:
                if (await receive())["type"] == "http.disconnect":
                    seen.gone.set()
                    return
        if path == "/echo":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while not seen.ended:
                message = await receive()
                if message["type"] == "http.disconnect":
                    seen.gone.set()
                    return
                chunk = message.get("body", b"")
                seen.received += len(chunk)
                seen.ended = not message.get("more_body", False)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/read" and not await body():
            return
        data = json.dumps({"received": seen.received}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


class RudeApp(Recorder):
    """An app that breaks the rules, over HTTP/1.1 (h11) or h2c (h2), whichever the sidecar speaks:

    /close          closes the connection as soon as the request head is in, without a byte back
    /garbage        answers with a malformed response head
    /reset-body     reads the first request body bytes, then resets (HTTP/1.1: closes the connection)
    /cut            answers 200 with a head promising 100 bytes, sends 10, then resets (closes)
    /trailers       (well-behaved, for what hypercorn drops: request trailers) reads the body and its
                    trailers, answers 200 with "part one,part two" and the trailer x-checksum: abc123
    """

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            first = await stream.receive_some(65536)
            if first.startswith(H2_PREFACE[: len(first)]) and first:
                await self._h2(stream, first)
            else:
                await self._h1(stream, first)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _h1(self, stream: trio.SocketStream, data: bytes) -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        seen: Seen | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    if seen is not None:
                        seen.gone.set()
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                seen = self.arrive(event.target.decode())
                if seen.path == "/close":
                    return
                if seen.path == "/garbage":
                    await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
                    return
                if seen.path == "/cut":
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"c" * 10)
                    return
            elif isinstance(event, h11.Data) and seen is not None:
                seen.received += len(event.data)
                if seen.path == "/reset-body":
                    return
            elif isinstance(event, h11.EndOfMessage):
                if seen is not None:
                    seen.ended = True
                    seen.trailers = list(event.headers)
                if seen is not None and seen.path == "/trailers":
                    await stream.send_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
                        b"9\r\npart one,\r\n8\r\npart two\r\n0\r\nx-checksum: abc123\r\n\r\n"
                    )
                    return
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                return
            elif isinstance(event, h11.ConnectionClosed):
                return

    async def _h2(self, stream: trio.SocketStream, data: bytes) -> None:
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        seen: dict[int, Seen] = {}
        while True:
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    fields = dict(event.headers)
                    request = seen[event.stream_id] = self.arrive(fields[b":path"].decode())
                    if request.path == "/close":
                        return
                    if request.path == "/garbage":  # no :status: a malformed response
                        conn.send_headers(event.stream_id, [(b"content-type", b"text/plain")], end_stream=True)
                    elif request.path == "/cut":
                        conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-length", b"100")])
                        conn.send_data(event.stream_id, b"c" * 10)
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                elif isinstance(event, h2.events.DataReceived):
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    request = seen[event.stream_id]
                    request.received += len(event.data)
                    if request.path == "/reset-body" and not request.gone.is_set():
                        request.gone.set()
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                elif isinstance(event, h2.events.TrailersReceived):
                    seen[event.stream_id].trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    request = seen[event.stream_id]
                    request.ended = True
                    if request.path in ("/garbage", "/cut"):
                        continue  # answered already
                    if request.path == "/trailers":
                        conn.send_headers(event.stream_id, [(b":status", b"200")])
                        conn.send_data(event.stream_id, b"part one,part two")
                        conn.send_headers(event.stream_id, [(b"x-checksum", b"abc123")], end_stream=True)
                        continue
                    conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-length", b"2")])
                    conn.send_data(event.stream_id, b"ok", end_stream=True)
                elif isinstance(event, h2.events.StreamReset) and event.stream_id in seen:
                    seen[event.stream_id].gone.set()
            outgoing = conn.data_to_send()
            if outgoing:
                await stream.send_all(outgoing)
            data = await stream.receive_some(65536)
            if not data:
                for request in seen.values():
                    request.gone.set()
                return


# --------------------------------------------------------------------------------------------------
# The path: client -> sidecar A -> sidecar B -> app
# --------------------------------------------------------------------------------------------------


class MatrixPath:
    """Two sidecars and an app, wired for one pairing. `a_fields`/`b_fields` add Sidecar fields
    (`limits`, ...), `service_fields` the orders Service's at A (`timeouts`, `retries`, ...)."""

    def __init__(self, mesh: Mesh, pairing: Pairing) -> None:
        self.mesh = mesh
        self.pairing = pairing
        self.a: SidecarHandle
        self.b: SidecarHandle

    async def build(
        self,
        app: Recorder | None = None,
        *,
        a_fields: dict[str, Any] | None = None,
        b_fields: dict[str, Any] | None = None,
        b_inbound: dict[str, Any] | None = None,
        service_fields: dict[str, Any] | None = None,
    ) -> MatrixPath:
        """Start the app (None: a port nothing listens on), sidecar B in front of it, sidecar A."""
        if app is None:
            app_port = free_port()
        elif isinstance(app, RudeApp):
            app_port = await self.mesh.nursery.start(app.serve)
        else:
            app_port = await self._hypercorn(app)
        inbound = {"app_protocol": self.pairing.app, **(b_inbound or {})}
        self.b = await self.mesh.sidecar(service="orders", inbound_app=app_port, inbound=inbound, **(b_fields or {}))
        fields: dict[str, Any] = {"protocol": self.pairing.hop, "timeouts": {"request": REQUEST_TIMEOUT}}
        fields.update(service_fields or {})
        self.a = await self.mesh.sidecar(
            service="frontend", services=[mesh_service("orders", self.b, **fields)], **(a_fields or {})
        )
        return self

    async def _hypercorn(self, app: RecordingApp) -> int:
        port = free_port()
        config = hypercorn.config.Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.errorlog = None
        await self.mesh.nursery.start(partial(hypercorn.trio.serve, app, config, mode="asgi"))
        return port

    async def client(self) -> Client:
        """A new downstream connection to sidecar A's outbound listener, in the pairing's protocol."""
        if self.pairing.downstream == "h2c":
            h2client = H2Client(self.a.outbound)
            await h2client.connect(self.mesh.nursery)
            return h2client
        h1client = H1Client(self.a.outbound)
        await h1client.connect()
        return h1client

    async def exchange(self, client: Client, method: str = "GET", path: str = "/info", **kwargs: Any) -> Reply:
        """One request, answered within REPLY_TIMEOUT (well before any request timeout)."""
        with trio.fail_after(REPLY_TIMEOUT):
            return await client.exchange(method, path, **kwargs)

    async def serves(self) -> None:
        """The path still serves: a new connection gets 200 from the app."""
        client = await self.client()
        try:
            reply = await self.exchange(client, "GET", "/info")
            assert reply.status == 200 and reply.complete, reply
        finally:
            await client.aclose()

    async def settled(self) -> None:
        """Every counter back at rest: no request in flight at A (to orders) or at B (to the app),
        nothing pending, no retry in flight."""
        with trio.fail_after(SETTLE_TIMEOUT):
            while True:
                busy = []
                for handle, cluster in (
                    (self.a, self.a.runtime.registry.clusters["orders"]),
                    (self.b, self.b.runtime.registry.app),
                ):
                    assert cluster is not None
                    breaker = cluster.breaker
                    active = sum(e.active_requests for e in cluster.endpoints)
                    if active or breaker.requests or breaker.pending or breaker.retries:
                        busy.append((handle.service, active, breaker.requests, breaker.pending, breaker.retries))
                if not busy:
                    return
                await trio.sleep(0.01)

    def hop_connections(self) -> int:
        """Connections open from A to B."""
        return self.a.runtime.registry.clusters["orders"].open_connections
