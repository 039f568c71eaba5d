"""HTTP/2 server side of a connection: frames in, one task per stream in the connection's nursery,
responses streamed back under flow control, GOAWAY on drain.

The reader task feeds h2's state machine and dispatches its events. Request bodies are handed to the
stream's handler chunk by chunk and acknowledged (WINDOW_UPDATE) only once the handler has read them,
so a slow consumer stops the peer instead of growing a buffer: what one stream holds is bounded by
its flow-control window. Responses wait for window before each DATA frame. All bytes go out through
one lock-guarded `flush()`.
"""

from __future__ import annotations

import math

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import structlog
import trio

from ..http.errors import BodyTooLarge, DownstreamGone, HeadersTooLarge, ProxyError
from ..http.h2 import fields_from_h2, header_list_size, request_from_h2, response_to_h2, trailers_to_h2
from ..http.message import EMPTY_BODY, Body, ConnectionInfo, Headers, Request, Response
from ..pipeline.handler import Handler
from ..pipeline.local_reply import call_guarded, error_response
from .h1_server import ServerLimits
from .h2_body import H2Body
from .listener import ConnectionTimer, Listener
from .wire import RECEIVE_SIZE

log = structlog.get_logger("sidecar.h2")

MAX_CONCURRENT_STREAMS = 128
_NO_BODY_STATUS = frozenset({204, 304})
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


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
        self.conn = conn
        self.handler = handler
        self.limits = limits
        self.listener = listener
        self.scheme = b"https" if conn.tls else b"http"
        self.mesh_peer = conn.peer_identity is not None  # a verified sidecar: header casing is carried
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=config)
        self.timer = ConnectionTimer()
        self._send_lock = trio.StrictFIFOLock()
        self._bodies: dict[int, H2Body] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._windows: dict[int, trio.Event] = {}
        self._goaway_sent = False
        self._nursery: trio.Nursery | None = None

    # -- output ------------------------------------------------------------------------------------

    async def flush(self) -> None:
        async with self._send_lock:
            data = self.h2.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except _STREAM_ERRORS:
                    raise DownstreamGone("client went away") from None

    async def acknowledge(self, stream_id: int, flow_controlled: int) -> None:
        try:
            self.h2.acknowledge_received_data(flow_controlled, stream_id)
        except h2.exceptions.StreamClosedError:
            return
        await self.flush()

    # -- the connection ----------------------------------------------------------------------------

    async def serve(self) -> None:
        h2c = self.h2
        h2c.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_request_headers,
            },
        )
        h2c.initiate_connection()
        timer = self.timer
        timers = self.listener.timers
        timers.add(timer)
        try:
            with timer.scope:
                await self.flush()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._read_frames()
                    nursery.cancel_scope.cancel()
        except* DownstreamGone:
            pass
        finally:
            timers.discard(timer)
            if not self._goaway_sent:
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    self._goaway_sent = True
                    try:
                        h2c.close_connection()
                        await self.flush()
                    except (DownstreamGone, h2.exceptions.ProtocolError):
                        pass

    def _mark_idle(self) -> None:
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
                await self._send_goaway()
            if self._goaway_sent and not self._scopes:
                return
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except _STREAM_ERRORS:
                return
            if not data:
                return
            try:
                events = h2c.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log.info("h2_protocol_error", error=str(exc), peer=self.conn.peer_host)
                self._goaway_sent = True
                await self.flush()  # h2 queued the GOAWAY
                return
            for event in events:
                self._dispatch(event)
            await self.flush()

    async def _send_goaway(self) -> None:
        self._goaway_sent = True
        self.h2.close_connection()
        await self.flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._start_stream(event)
        elif isinstance(event, h2.events.DataReceived):
            body = self._bodies.get(event.stream_id)
            if body is not None:
                body.feed(event.data, event.flow_controlled_length)
            else:  # nobody reads it: give the window back at once
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            body = self._bodies.get(event.stream_id)
            if body is not None:
                body.end()
        elif isinstance(event, h2.events.TrailersReceived):
            body = self._bodies.get(event.stream_id)
            if body is not None:
                body.end(Headers(fields_from_h2(event.headers, from_mesh=self.mesh_peer)))
        elif isinstance(event, h2.events.StreamReset):
            body = self._bodies.get(event.stream_id)
            if body is not None:
                body.fail(DownstreamGone("stream reset by the client"))
            scope = self._scopes.get(event.stream_id)
            if scope is not None:
                scope.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:  # the connection window grew: every waiting stream may go on
                for each in self._windows.values():
                    each.set()
                self._windows.clear()
            elif event.stream_id in self._windows:
                self._windows.pop(event.stream_id).set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            for body in self._bodies.values():
                body.fail(DownstreamGone("connection terminated"))

    # -- one stream --------------------------------------------------------------------------------

    def _start_stream(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_sent:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        pairs = event.headers or []
        error: ProxyError | None = None
        request: Request | None = None
        try:
            if header_list_size(pairs) > self.limits.max_request_headers:
                raise HeadersTooLarge()
            head = request_from_h2(pairs, from_mesh=self.mesh_peer)
            ended = event.stream_ended is not None
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
                    return
                async with trio.open_nursery() as nursery:
                    request.task_nursery = nursery
                    response = await self._call(request)
                    await self._respond(stream_id, request.method, response)
                    nursery.cancel_scope.cancel()
            if scope.cancelled_caught:
                return
        except DownstreamGone:
            pass
        finally:
            self._scopes.pop(stream_id, None)
            self._bodies.pop(stream_id, None)
            self._windows.pop(stream_id, None)
            if request is not None and getattr(request.body, "done", True) is False:
                try:  # the handler never read the whole body: stop the peer sending it
                    self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    await self.flush()
                except (h2.exceptions.ProtocolError, DownstreamGone):
                    pass

    async def _call(self, request: Request) -> Response:
        return await call_guarded(self.handler, request)

    async def _respond(self, stream_id: int, method: bytes, response: Response) -> None:
        h2c = self.h2
        body = response.body
        try:
            headers = response_to_h2(response.status, response.headers, to_mesh=self.mesh_peer)
            if method == b"HEAD" or response.status in _NO_BODY_STATUS:
                h2c.send_headers(stream_id, headers, end_stream=True)
                await self.flush()
                return
            try:
                first = await body.read()
            except ProxyError as error:  # nothing sent yet: answer properly
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
                await self._send_data(stream_id, chunk, end=False)
                try:
                    chunk = await body.read()
                except ProxyError as error:
                    log.info("response_aborted", reason=error.reason, detail=error.detail)
                    h2c.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    await self.flush()
                    return
            if body.trailers:
                h2c.send_headers(stream_id, trailers_to_h2(body.trailers, to_mesh=self.mesh_peer), end_stream=True)
            else:
                h2c.end_stream(stream_id)
            await self.flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            raise DownstreamGone("stream closed") from None
        finally:
            await body.aclose()

    async def _send_data(self, stream_id: int, data: bytes, *, end: bool) -> None:
        h2c = self.h2
        view = memoryview(data)
        while view:
            window = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
            if window <= 0:
                waiter = self._windows.get(stream_id)
                if waiter is None:
                    waiter = self._windows[stream_id] = trio.Event()
                await waiter.wait()
                continue
            piece, view = view[:window], view[window:]
            h2c.send_data(stream_id, bytes(piece), end_stream=end and not view)
            await self.flush()
        if end and not data:
            h2c.end_stream(stream_id)
            await self.flush()
