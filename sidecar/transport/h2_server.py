"""HTTP/2 server side of a connection: frames in, one task per stream in the connection's nursery,
responses streamed back under flow control, GOAWAY on drain, and the abuse limits of `h2_guard`.

The reader task feeds the connection codec (`http/h2_conn.py`) and dispatches its events. Request
bodies are handed to the stream's handler chunk by chunk and acknowledged (WINDOW_UPDATE) only once
the handler has read them, so a slow consumer stops the peer instead of growing a buffer: what one
stream holds is bounded by its flow-control window. Responses wait for window before each DATA frame.

All bytes go out through one writer task: the reader and the stream tasks hand frames to the codec,
and `flush()` moves its output to the writer's backlog and wakes it; the writer sends the whole backlog
in one write, so the frames of many streams share a TLS record and a syscall. `flush()` waits only
while the backlog is over `HIGH_WATER`, which bounds what the connection holds for a slow reader.

Abuse: client resets (and our resets for a client's protocol error on a stream), refused streams,
PINGs and SETTINGS spend the connection's budgets, and past them the connection ends with GOAWAY
ENHANCE_YOUR_CALM; streams past MAX_CONCURRENT_STREAMS are refused; header blocks are bounded while
buffered and while decoded. The reader reads again only once
the backlog is under `HIGH_WATER`, so what a peer that does not read makes us queue (ACKs, resets) is
bounded. A response that waits for window, or a write that waits for the peer to read, with no
progress for the stall timeout gives up its stream, or the connection when the whole connection is
stuck. Each abuse is logged once per connection, with the peer.

A stream's reset never cuts a write half-way, since stream tasks do not write. A write cut otherwise
(the connection's cancellation, the stall watchdog) leaves a partial frame on the wire, so the
connection then ends without a GOAWAY.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable

import trio

from ..http.errors import BadRequest, BodyTooLarge, DownstreamGone, HeadersTooLarge, ProxyError
from ..http.h2 import fields_from_h2, request_from_h2, response_to_h2, trailers_to_h2
from ..http.h2_conn import (
    DATA_RECEIVED,
    GOAWAY_RECEIVED,
    HEADERS_RECEIVED,
    STREAM_REFUSED,
    STREAM_RESET,
    TRAILERS_RECEIVED,
    WINDOW_OPENED,
    ErrorCode,
    Event,
    H2ConnectionError,
    H2StateError,
)
from ..http.message import EMPTY_BODY, Body, ConnectionInfo, ExchangeObserver, Headers, Request, Response
from ..http.replies import error_response
from ..logger import get_logger
from .backlog import Backlog
from .h1_server import ServerLimits
from .h2_body import H2Body
from .h2_guard import (
    MAX_CONCURRENT_STREAMS,
    STALL_TIMEOUT_FACTOR,
    ConnectionGuard,
    PeerAbuse,
    guarded_connection,
)
from .handler import Handler, call_guarded
from .listener import ConnectionTimer, Listener
from .wire import RECEIVE_SIZE

log = get_logger("sidecar.h2")

_NO_BODY_STATUS = frozenset({204, 304})
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_CALM = ErrorCode.ENHANCE_YOUR_CALM
HIGH_WATER = 65536  # bytes in the writer's backlog before flush() waits for it to be sent
INLINE_MAX_STREAMS = 1  # with more streams open, frames wait for the writer (one write for many)

__all__ = ["MAX_CONCURRENT_STREAMS", "STATS", "H2Server"]


class H2ServerStats:
    """Process-wide counters of the HTTP/2 server side (tests and diagnostics read them)."""

    __slots__ = ("abuse", "streams")

    def __init__(self) -> None:
        self.streams = 0  # stream tasks running now, all connections
        self.abuse: Counter[str] = Counter()  # connections that met each abuse limit, by reason


STATS = H2ServerStats()


class H2Server:
    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: ConnectionInfo,
        handler: Handler,
        limits: ServerLimits,
        listener: Listener,
    ) -> None:
        self.stream = stream
        # How to write at once, without waiting (TcpStream, TlsStream); None for other streams.
        self._try_send: Callable[[bytes], int] | None = getattr(stream, "try_send", None)
        self.conn = conn
        self.handler = handler
        self.limits = limits
        self.listener = listener
        self.scheme = b"https" if conn.tls else b"http"
        self.mesh_peer = conn.peer_identity is not None  # a verified sidecar: header casing is carried
        self.h2 = guarded_connection(limits.max_request_headers)
        self.guard = ConnectionGuard()
        self.h2.frame_guard = self.guard.frame_guard(trio.current_time)
        self.stall_timeout = STALL_TIMEOUT_FACTOR * limits.header_read_timeout
        self.timer = ConnectionTimer()
        self._backlog = Backlog()  # output waiting for the writer
        self._bodies: dict[int, H2Body] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._windows: dict[int, trio.Event] = {}
        self._goaway_sent = False
        self._nursery: trio.Nursery | None = None
        self._wire_broken = False  # a write failed or was cut half-way: nothing more can be sent
        self._reported: set[str] | None = None  # abuses logged on this connection
        self._last_stream_id = 0  # the last stream handed to a task (GOAWAY's last stream after abuse)

    # -- output ------------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Hand what h2 has queued to the writer; wait while the backlog is over HIGH_WATER."""
        data = self.h2.data_to_send()
        if data:
            self._queue(data)
        if self._backlog.size > HIGH_WATER:
            await self._sent()
        if self._wire_broken:
            raise DownstreamGone("client went away")

    def _queue(self, data: bytes) -> None:
        inline = len(self._scopes) <= INLINE_MAX_STREAMS and not self._wire_broken
        self._backlog.add_or_send(data, self._try_send if inline else None)

    async def _sent(self) -> None:
        """Wait until the writer has sent the backlog (or the connection can send no more)."""
        if not self._wire_broken:
            await self._backlog.sent()

    async def _writer(self) -> None:
        """Send the backlog, all of it in one write, whenever there is one. While a write waits, the
        connection timer's deadline is the stall timeout: the listener's watchdog ends a connection
        whose peer stopped reading."""
        backlog = self._backlog
        timer = self.timer
        try:
            while True:
                if not backlog:
                    await backlog.idle()
                    continue
                data = backlog.take()
                backlog.writing = True
                timer.deadline = trio.current_time() + self.stall_timeout
                try:
                    await self.stream.send_all(data)
                except _STREAM_ERRORS:
                    self._wire_broken = True
                    self.timer.scope.cancel()  # the client is gone: so are its streams
                    return
                except BaseException:
                    self._write_cut()
                    raise
                backlog.writing = False
                self._mark_idle()
        finally:
            backlog.release()

    def _write_cut(self) -> None:
        """A write ended half-way: the byte stream holds a partial frame, so the connection ends."""
        self._wire_broken = True
        if trio.current_time() >= self.timer.deadline:
            self._report("send_stalled")
        self.timer.scope.cancel()

    async def acknowledge(self, stream_id: int, flow_controlled: int) -> None:
        self.h2.acknowledge(stream_id, flow_controlled)
        await self.flush()

    def release(self, stream_id: int, flow_controlled: int) -> None:
        self.h2.acknowledge(stream_id, flow_controlled)  # out with the next flush

    async def _goaway(self, error_code: int = ErrorCode.NO_ERROR, last_stream_id: int | None = None) -> None:
        """GOAWAY; `last_stream_id` defaults to the highest stream the client opened."""
        self._goaway_sent = True
        if self.h2.closed:  # a connection error sent its GOAWAY already
            return
        self.h2.goaway(error_code, last_stream_id)
        await self.flush()

    def _report(self, reason: str) -> None:
        """Count an abuse and log it, once per connection and reason."""
        reported = self._reported
        if reported is None:
            reported = self._reported = set()
        if reason in reported:
            return
        reported.add(reason)
        STATS.abuse[reason] += 1
        log.warning("h2_abuse", reason=reason, peer=self.conn.peer_host)

    # -- the connection ----------------------------------------------------------------------------

    async def serve(self) -> None:
        self.h2.initiate()  # our SETTINGS (MAX_CONCURRENT_STREAMS, the windows), the connection window
        timer = self.timer
        timers = self.listener.timers
        timers.add(timer)
        try:
            with timer.scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._goaway_on_drain)
                    await self.flush()  # our SETTINGS
                    await self._read_frames()
                    await self._sent()  # the last frames (a GOAWAY, final responses) go out first
                    nursery.cancel_scope.cancel()
        except* DownstreamGone:
            pass
        finally:
            timers.discard(timer)
            if not self._wire_broken:
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await self._last_words()

    async def _goaway_gracefully(self) -> None:
        """GOAWAY NO_ERROR for a drain: the streams in flight are still answered (the codec sends
        their frames after it); streams the client opens after it are refused by `_start_stream`."""
        await self._goaway()

    async def _goaway_on_drain(self) -> None:
        """When the listener drains: GOAWAY at once, busy or not (the streams in flight finish; the
        client opens new ones elsewhere), and the connection closes when its last stream is done."""
        await self.listener.drain_started.wait()
        if not self._goaway_sent:
            await self._goaway_gracefully()
        if not self._scopes:
            await self._close_when_sent()

    async def _close_when_sent(self) -> None:
        """End the connection once everything queued is written."""
        await self._sent()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _last_words(self) -> None:
        """The writer has stopped: send what is left, with a GOAWAY unless one went out already."""
        if not self._goaway_sent and not self.h2.closed:
            self._goaway_sent = True
            self.h2.goaway()
        data = self._backlog.take() + self.h2.data_to_send()
        if data:
            with contextlib.suppress(*_STREAM_ERRORS):
                await self.stream.send_all(data)

    def _mark_idle(self) -> None:
        if self._backlog.writing:
            return  # the write's stall deadline stands; the write calls this when it is done
        timer = self.timer
        if self._scopes:
            timer.idle = False
            timer.deadline = math.inf
        else:
            timer.idle = True
            timer.deadline = trio.current_time() + self.limits.header_read_timeout

    async def _read_frames(self) -> None:
        h2c = self.h2
        while True:
            self._mark_idle()
            if self.listener.draining and not self._goaway_sent:
                await self._goaway_gracefully()
            if self._goaway_sent and not self._scopes:
                return
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except _STREAM_ERRORS:
                return
            if not data:
                return
            try:
                self._dispatch(h2c.receive(data))
            except H2ConnectionError as exc:
                if exc.reason is None:
                    log.info("h2_protocol_error", error=str(exc), peer=self.conn.peer_host)
                else:
                    self._report(exc.reason)
                self._goaway_sent = True
                await self.flush()  # the codec queued the GOAWAY
                return
            except PeerAbuse as abuse:
                self._report(abuse.reason)
                await self._goaway(abuse.error_code, self._last_stream_id)
                return
            await self.flush()

    def _dispatch(self, events: list[Event]) -> None:
        bodies = self._bodies
        for event in events:
            kind = event[0]
            if kind == DATA_RECEIVED:
                body = bodies.get(event[1])
                if body is not None:
                    if event[2]:
                        body.feed(event[2], event[3])
                    if event[4]:
                        body.end()
                else:  # nobody reads it: give the window back at once
                    self.h2.acknowledge(event[1], event[3])
            elif kind == HEADERS_RECEIVED:
                self._start_stream(event[1], event[2], event[3], event[4])
            elif kind == TRAILERS_RECEIVED:
                body = bodies.get(event[1])
                if body is None:
                    continue
                if event[3] > self.limits.max_request_headers:  # the header limit covers trailers too
                    body.fail(HeadersTooLarge("request trailer fields too large"))
                else:
                    body.end(Headers(fields_from_h2(event[2], from_mesh=self.mesh_peer)))
            elif kind == STREAM_RESET:
                self._stream_reset(event[1], by_client=event[3])
            elif kind == WINDOW_OPENED:
                if event[1] == 0:  # the connection window grew, or every stream's: all may go on
                    self._wake_windows()
                elif event[1] in self._windows:
                    self._windows.pop(event[1]).set()
            elif kind == STREAM_REFUSED:
                self._refused()
            elif kind == GOAWAY_RECEIVED:
                for body in bodies.values():
                    body.fail(DownstreamGone("connection terminated"))

    def _wake_windows(self) -> None:
        for waiter in self._windows.values():
            waiter.set()
        self._windows.clear()

    def _stream_reset(self, stream_id: int, *, by_client: bool) -> None:
        """The stream was reset, by the client or by the codec for the client's protocol error on it:
        its work is cancelled, and a stream we had started work for spends the reset budget."""
        body = self._bodies.get(stream_id)
        if body is not None:
            body.fail(DownstreamGone("stream reset by the client") if by_client else BadRequest("stream error"))
        scope = self._scopes.get(stream_id)
        if scope is None:
            return
        scope.cancel()
        self.guard.stream_cancelled(trio.current_time())

    def _refused(self) -> None:
        """The codec refused a stream past MAX_CONCURRENT_STREAMS (REFUSED_STREAM: not processed)."""
        self._report("too_many_streams")
        self.guard.stream_cancelled(trio.current_time(), "refused_stream_flood")

    # -- one stream --------------------------------------------------------------------------------

    def _start_stream(self, stream_id: int, pairs: list[tuple[bytes, bytes]], ended: bool, list_size: int) -> None:
        if self._goaway_sent:
            self.h2.reset(stream_id, ErrorCode.REFUSED_STREAM)
            return
        error: ProxyError | None = None
        request: Request | None = None
        try:
            if list_size > self.limits.max_request_headers:
                self._report("header_list_too_large")
                raise HeadersTooLarge()
            head = request_from_h2(pairs, from_mesh=self.mesh_peer)
            body: Body = EMPTY_BODY
            if not ended:
                cl = head.headers.get(b"content-length")
                length = int(cl) if cl is not None and cl.isdigit() else None
                limit = self.limits.max_request_body
                if limit and length is not None and length > limit:
                    raise BodyTooLarge()
                h2body = H2Body(self, stream_id, length, limit)
                self._bodies[stream_id] = h2body
                body = h2body
            request = Request(
                head.method,
                head.path,
                head.authority,
                head.headers,
                body,
                self.conn,
                http_version="2",
                scheme=self.scheme,
            )
        except ProxyError as exc:
            error = exc
        scope = trio.CancelScope()
        self._scopes[stream_id] = scope
        self.timer.idle = False  # a drain must not take the connection for idle while it writes
        STATS.streams += 1
        self._last_stream_id = stream_id
        assert self._nursery is not None
        self._nursery.start_soon(self._run_stream, stream_id, request, error, scope)

    async def _run_stream(
        self, stream_id: int, request: Request | None, error: ProxyError | None, scope: trio.CancelScope
    ) -> None:
        try:
            with scope:
                if request is None:
                    assert error is not None
                    await self._respond(stream_id, b"GET", error_response(error))
                    if self.listener.rejected is not None:
                        self.listener.rejected(self.conn, "HTTP/2", error.status, error.reason)
                    return
                if request.body is EMPTY_BODY:  # nothing to pump upstream: no nursery needed
                    response = await self._call(request)
                    await self._respond(stream_id, request.method, response, request.observer)
                else:
                    async with trio.open_nursery() as nursery:
                        request.task_nursery = nursery
                        response = await self._call(request)
                        await self._respond(stream_id, request.method, response, request.observer)
                        nursery.cancel_scope.cancel()
            if not scope.cancelled_caught:
                self.guard.stream_completed()
        except* DownstreamGone:  # raised inside the stream's nursery, so it comes grouped
            pass
        finally:
            STATS.streams -= 1
            self._scopes.pop(stream_id, None)
            body = self._bodies.pop(stream_id, None)
            unread = False
            if body is not None and not body.done:
                # A body read to its content-length lacks only END_STREAM, which is on its way (httpx
                # sends it in a frame of its own): resetting the stream would fail the client's
                # finished request. Anything else unread is stopped.
                unread = not body.read_to_length
                body.abandon()  # what it holds unread is credited back to the connection
            self._windows.pop(stream_id, None)
            if not self._scopes:
                self._mark_idle()  # the reader may be waiting for a frame: arm the idle timeout now
                if self._goaway_sent and self._nursery is not None:  # draining: that was the last stream
                    self._nursery.start_soon(self._close_when_sent)
            if unread and self.h2.reset(stream_id, ErrorCode.NO_ERROR):  # stop the peer sending the rest
                with contextlib.suppress(DownstreamGone):
                    await self.flush()

    async def _call(self, request: Request) -> Response:
        return await call_guarded(self.handler, request)

    async def _respond(
        self, stream_id: int, method: bytes, response: Response, observer: ExchangeObserver | None = None
    ) -> None:
        """Send `response` on the stream; `observer` hears the status, body bytes and the reason of
        a reply made here once it is sent (or given up)."""
        h2c = self.h2
        body = response.body
        status = response.status
        sent = 0
        reason: str | None = None
        try:
            headers = response_to_h2(status, response.headers, to_mesh=self.mesh_peer)
            if method == b"HEAD" or status in _NO_BODY_STATUS:
                h2c.send_headers(stream_id, headers, end_stream=True)
                await self.flush()
                return
            try:
                first = await body.read()
            except ProxyError as error:  # nothing sent yet: answer properly
                status, reason = error.status, error.reason
                local = error_response(error)
                h2c.send_headers(stream_id, response_to_h2(local.status, local.headers))
                await self._send_data(stream_id, await local.body.read(), end=True)
                return
            if not first and body.trailers is None:
                h2c.send_headers(stream_id, headers, end_stream=True)
                await self.flush()
                return
            h2c.send_headers(stream_id, headers)
            chunk = first
            while chunk:
                sent += len(chunk)
                if getattr(body, "done", False) and body.trailers is None:  # the last chunk: it ends the stream
                    await self._send_data(stream_id, chunk, end=True)
                    return
                await self._send_data(stream_id, chunk, end=False)
                try:
                    chunk = await body.read()
                except ProxyError as error:
                    reason = error.reason
                    log.info("response_aborted", reason=error.reason, detail=error.detail)
                    h2c.reset(stream_id, ErrorCode.INTERNAL_ERROR)
                    await self.flush()
                    return
            if body.trailers:
                h2c.send_headers(stream_id, trailers_to_h2(body.trailers, to_mesh=self.mesh_peer), end_stream=True)
            else:
                h2c.end_stream(stream_id)
            await self.flush()
        except H2StateError:
            raise DownstreamGone("stream closed") from None
        finally:
            try:
                if observer is not None:
                    observer.response_sent(status, sent, reason)
            finally:
                await body.aclose()

    async def _send_data(self, stream_id: int, data: bytes, *, end: bool) -> None:
        """DATA as the windows allow (the codec cuts it to the peer's frame size)."""
        h2c = self.h2
        if not data:
            if end:
                h2c.end_stream(stream_id)
                await self.flush()
            return
        view: bytes | memoryview = data
        while view:
            window = h2c.send_window(stream_id)
            if window <= 0:
                if stream_id not in h2c.streams:
                    raise DownstreamGone("stream closed")
                await self._wait_for_window(stream_id)
                continue
            if window >= len(view):
                h2c.send_data(stream_id, view, end_stream=end)
                await self.flush()
                return
            if isinstance(view, bytes):
                view = memoryview(view)
            h2c.send_data(stream_id, view[:window])
            view = view[window:]
            await self.flush()

    async def _wait_for_window(self, stream_id: int) -> None:
        """Wait until the peer gives window. A peer that gives none for the stall timeout loses the
        stream (RST_STREAM CANCEL), or the connection (GOAWAY ENHANCE_YOUR_CALM) when it is the
        connection window that stays shut, since then no stream can move."""
        waiter = self._windows.get(stream_id)
        if waiter is None:
            waiter = self._windows[stream_id] = trio.Event()
        with trio.move_on_after(self.stall_timeout):
            await waiter.wait()
            return
        self._windows.pop(stream_id, None)
        if self.h2.send_connection_window <= 0:
            self._report("connection_window_stalled")
            await self._goaway(_CALM)
            await self._sent()  # the GOAWAY goes out before the streams (the writer too) are cancelled
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
        else:
            self._report("stream_window_stalled")
            self.h2.reset(stream_id, ErrorCode.CANCEL)
            await self.flush()
        raise DownstreamGone("the peer gave no flow-control window")
