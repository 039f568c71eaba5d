"""HTTP/2 client side of one upstream connection: many requests multiplexed on it at once.

A connection's reader and writer tasks run in the registry's nursery (handed over explicitly),
because the connection outlives any single request. Streams never write to the socket themselves:
they hand frames to the connection codec (`http/h2_conn.py`) and wake the writer, which sends
everything queued in one write — many streams' frames share one TLS record and one syscall. A stream
sending body data waits while more than `HIGH_WATER` bytes are queued, so the writer's backlog stays
bounded.

The reader reads again only once the backlog is under `HIGH_WATER`, so what a peer that does not
read makes us queue (PING and SETTINGS acknowledgements) is bounded too.

`send()` opens a stream, queues the head and (in the request's nursery) the body under flow control,
and waits for the response head; the response body is an `H2Body` fed by the reader. A stream the
peer refused (REFUSED_STREAM, or beyond a GOAWAY's last stream id) never reached the app, and says so
in the error, so the caller may try elsewhere.

The connection reports to its owner (the pool, in `upstream/`) through `H2ClientOwner`, the protocol
defined here. The accounting contract matches HTTP/1.1's: once `send()` is called,
`owner.stream_done(conn)` is called exactly once for that request; `owner.connection_closed(conn)`
once, when the connection ends. What it needs to know of its peer comes as values when it is made:
`secure` (TLS: `:scheme` is https) and `mesh_peer` (a sidecar over mutual TLS: header casing is
carried); the owner's `stream_idle_timeout` is read as each response head arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from ..http.errors import DownstreamGone, ProxyError, UpstreamConnectFailure, UpstreamProtocolError, UpstreamReset
from ..http.h2 import fields_from_h2, fields_to_h2
from ..http.h2_conn import (
    DATA_RECEIVED,
    GOAWAY_RECEIVED,
    HEADERS_RECEIVED,
    SETTINGS_RECEIVED,
    STREAM_RESET,
    TRAILERS_RECEIVED,
    WINDOW_OPENED,
    ErrorCode,
    Event,
    H2Connection,
    H2ConnectionError,
    H2StateError,
)
from ..http.message import EMPTY_BODY, Body, Headers, Request, Response
from ..logger import get_logger
from .backlog import Backlog
from .h1_client import MAX_RESPONSE_HEAD
from .h2_body import CONNECTION_WINDOW, STREAM_WINDOW, H2Body
from .wire import RECEIVE_SIZE, close_stream_now

log = get_logger("sidecar.h2")

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
HIGH_WATER = 65536  # bytes queued for the writer before body senders wait
INLINE_MAX_STREAMS = 1  # with more streams in flight, frames wait for the writer (one write for many)


class _Exchange:
    __slots__ = ("body", "error", "headers", "ready", "status")

    def __init__(self) -> None:
        self.ready = trio.Event()
        self.status = 0
        self.headers: Headers | None = None
        self.body: H2Body | None = None
        self.error: Exception | None = None  # a ProxyError, or DownstreamGone from the request body


class H2ClientOwner(Protocol):
    """What an HTTP/2 client connection needs of its owner: where its streams and the connection end,
    and how long a response body may stall."""

    @property
    def stream_idle_timeout(self) -> float | None:
        """Seconds a response body may go without a byte before it ends (None: never)."""
        ...

    def stream_done(self, conn: H2ClientConnection) -> None:
        """One exchange on `conn` ended."""
        ...

    def connection_closed(self, conn: H2ClientConnection) -> None:
        """`conn` ended: it takes no more streams."""
        ...


class H2ClientConnection:
    def __init__(self, stream: trio.abc.Stream, owner: H2ClientOwner, *, secure: bool, mesh_peer: bool) -> None:
        # Responses are bounded like HTTP/1.1 response heads, decoded and while buffered.
        self.h2 = H2Connection(
            client=True,
            initial_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
            max_header_list=MAX_RESPONSE_HEAD,
            max_header_block=MAX_RESPONSE_HEAD,
        )
        self.stream = stream
        # How to write at once, without waiting (TcpStream, TlsStream); None for other streams.
        self._try_send: Callable[[bytes], int] | None = getattr(stream, "try_send", None)
        self.owner = owner
        self.scheme = b"https" if secure else b"http"
        self.mesh_peer = mesh_peer  # a sidecar: header casing is carried
        self.closed = False
        self.goaway = False
        self.idle_since = trio.current_time()
        self.exchanges = 0  # completed on this connection
        self._exchanges: dict[int, _Exchange] = {}
        self._peer_settings = trio.Event()  # the peer's first SETTINGS arrived (or the connection ended)
        self._windows: dict[int, trio.Event] = {}
        self._backlog = Backlog()  # output waiting for the writer

    async def start(self, nursery: trio.Nursery) -> None:
        self.h2.initiate()  # the preface, our SETTINGS (push disabled, the windows), the connection window
        await self.stream.send_all(self.h2.data_to_send())
        nursery.start_soon(self._reader)
        nursery.start_soon(self._writer)
        await self._peer_settings.wait()  # from now on `capacity` holds the peer's stream limit
        if self.closed:
            raise UpstreamConnectFailure(detail="HTTP/2 connection closed before the peer's SETTINGS")

    @property
    def capacity(self) -> int:
        """How many more streams this connection takes now."""
        if self.closed or self.goaway:
            return 0
        return self.h2.peer_max_streams - len(self._exchanges)

    @property
    def active(self) -> int:
        """Streams in flight."""
        return len(self._exchanges)

    def close(self) -> None:
        self.closed = True
        close_stream_now(self.stream)
        self.kick()  # the writer sees `closed` and ends

    def kick(self) -> None:
        """Move what h2 has queued to the writer's backlog, and wake the writer when there is some
        (or when the connection closed, so that it ends)."""
        data = self.h2.data_to_send()
        if data:
            inline = len(self._exchanges) <= INLINE_MAX_STREAMS and not self.closed
            self._backlog.add_or_send(data, self._try_send if inline else None)
        elif self.closed:
            self._backlog.wake()

    async def _writer(self) -> None:
        backlog = self._backlog
        try:
            while not self.closed:
                if backlog:
                    backlog.writing = True
                    await self.stream.send_all(backlog.take())
                    backlog.writing = False
                    continue
                await backlog.idle()
        except _STREAM_ERRORS:
            self.close()  # the reader sees the closed socket and fails every exchange
        finally:
            backlog.writing = False
            backlog.release()

    async def _wait_drained(self) -> None:
        """Back off until the writer has sent what is queued."""
        await self._backlog.sent()

    async def acknowledge(self, stream_id: int, flow_controlled: int) -> None:
        self.h2.acknowledge(stream_id, flow_controlled)
        self.kick()

    def release(self, stream_id: int, flow_controlled: int) -> None:
        self.h2.acknowledge(stream_id, flow_controlled)
        self.kick()

    # -- one request -------------------------------------------------------------------------------

    async def send(self, request: Request) -> Response:
        h2c = self.h2
        try:
            stream_id = h2c.new_stream_id()
        except H2StateError as exc:  # out of stream ids, or the peer sent GOAWAY
            self.goaway = True
            self.owner.stream_done(self)
            raise UpstreamReset(detail=str(exc), refused=True) from None
        exchange = _Exchange()
        self._exchanges[stream_id] = exchange
        body = request.body
        headers = [
            (b":method", request.method),
            (b":scheme", self.scheme),
            (b":authority", request.authority or b""),
            (b":path", request.target),
        ]
        headers += fields_to_h2(request.headers.fields, to_mesh=self.mesh_peer, request=True)
        try:
            h2c.send_headers(stream_id, headers, end_stream=body is EMPTY_BODY)
        except H2StateError as exc:  # the peer's stream limit, reached while this request waited
            self.owner.stream_done(self)
            self._exchanges.pop(stream_id, None)
            raise UpstreamReset(detail=str(exc), refused=True) from None
        try:
            self.kick()
            if body is not EMPTY_BODY:
                if request.task_nursery is not None:
                    request.task_nursery.start_soon(self._pump, stream_id, body)
                else:
                    await self._pump(stream_id, body)
            await exchange.ready.wait()
        except BaseException:
            self._forget(stream_id, reset=True)
            raise
        if exchange.error is not None:
            self._forget(stream_id, reset=False)
            raise exchange.error
        assert exchange.headers is not None and exchange.body is not None
        return Response(exchange.status, exchange.headers, exchange.body)

    async def _pump(self, stream_id: int, body: Body) -> None:
        h2c = self.h2
        try:
            while chunk := await body.read():
                if getattr(body, "done", False) and body.trailers is None:  # the last chunk: it ends the stream
                    await self._send_data(stream_id, chunk, end=True)
                    return
                await self._send_data(stream_id, chunk)
            if body.trailers:
                h2c.send_headers(stream_id, fields_to_h2(body.trailers.fields, to_mesh=self.mesh_peer), end_stream=True)
            else:
                h2c.end_stream(stream_id)
            self.kick()
        except (ProxyError, DownstreamGone) as exc:
            # The downstream body turned bad or went away: the upstream request can never be whole.
            # The try ends now (RST_STREAM CANCEL): its caller gets the failure (a local reply, or
            # the end of the exchange when the client left), a response already started is cut.
            exchange = self._exchanges.get(stream_id)
            if exchange is not None:
                self._fail(exchange, exc)
            self._forget(stream_id, reset=True)
        except (H2StateError, *_STREAM_ERRORS):
            pass  # the stream or connection ended: the response side reports it

    async def _send_data(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """DATA as the windows allow (the codec cuts it to the peer's frame size); `end`: the last."""
        h2c = self.h2
        view: bytes | memoryview = data
        while view:
            window = h2c.send_window(stream_id)
            if window <= 0:
                if stream_id not in h2c.streams:
                    raise H2StateError("stream closed")
                waiter = self._windows.get(stream_id)
                if waiter is None:
                    waiter = self._windows[stream_id] = trio.Event()
                await waiter.wait()
                continue
            if window >= len(view):
                h2c.send_data(stream_id, view, end_stream=end)
                view = b""
            else:
                if isinstance(view, bytes):
                    view = memoryview(view)
                h2c.send_data(stream_id, view[:window])
                view = view[window:]
            self.kick()
            if self._backlog.size > HIGH_WATER:
                await self._wait_drained()
            if self.closed:
                raise trio.ClosedResourceError("upstream connection closed")

    def _forget(self, stream_id: int, *, reset: bool) -> None:
        """The exchange on `stream_id` is over (ended, failed or abandoned)."""
        exchange = self._exchanges.pop(stream_id, None)
        self._windows.pop(stream_id, None)
        if exchange is None:
            return
        if reset and not self.closed and self.h2.reset(stream_id, ErrorCode.CANCEL):
            self.kick()
        if not self._exchanges:
            self.idle_since = trio.current_time()
            if self.goaway and not self.closed:
                self.close()  # the peer sent GOAWAY and its last stream is done
        self.owner.stream_done(self)

    def _body_done(self, stream_id: int) -> Callable[[bool], None]:
        def done(failed: bool) -> None:
            self._forget(stream_id, reset=failed)

        return done

    # -- the reader --------------------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except _STREAM_ERRORS:
                    break
                if not data:
                    break
                try:
                    events = self.h2.receive(data)
                except H2ConnectionError as exc:
                    log.info("upstream_h2_protocol_error", error=str(exc))
                    self.kick()  # the GOAWAY
                    break
                self._dispatch(events)
                self.kick()
                if self.goaway and not self._exchanges:
                    break  # nothing left to wait for on a connection the peer is closing
                if self._backlog.size > HIGH_WATER and not self.closed:
                    await self._wait_drained()  # what a peer that does not read makes us queue stays bounded
        finally:
            self.closed = True
            self._peer_settings.set()
            self.kick()
            for exchange in list(self._exchanges.values()):
                self._fail(exchange, UpstreamReset(detail="upstream connection closed"))
            self.owner.connection_closed(self)
            close_stream_now(self.stream)

    def _fail(self, exchange: _Exchange, error: Exception) -> None:
        if not exchange.ready.is_set():
            exchange.error = error
            exchange.ready.set()
        elif exchange.body is not None:
            exchange.body.fail(error)

    def _dispatch(self, events: list[Event]) -> None:
        exchanges = self._exchanges
        for event in events:
            kind = event[0]
            if kind == DATA_RECEIVED:
                exchange = exchanges.get(event[1])
                if exchange is not None and exchange.body is not None:
                    if event[2]:
                        exchange.body.feed(event[2], event[3])
                    if event[4]:
                        exchange.body.end()
                else:
                    self.h2.acknowledge(event[1], event[3])
            elif kind == HEADERS_RECEIVED:
                self._response(event[1], event[2], event[3])
            elif kind == TRAILERS_RECEIVED:
                exchange = exchanges.get(event[1])
                if exchange is not None and exchange.body is not None:
                    exchange.body.end(Headers(fields_from_h2(event[2], from_mesh=self.mesh_peer)))
            elif kind == STREAM_RESET:
                exchange = exchanges.get(event[1])
                if exchange is not None:
                    self._fail(exchange, self._reset_error(event[2], by_peer=event[3]))
            elif kind == WINDOW_OPENED:
                if event[1] == 0:
                    for waiter in self._windows.values():
                        waiter.set()
                    self._windows.clear()
                elif event[1] in self._windows:
                    self._windows.pop(event[1]).set()
            elif kind == SETTINGS_RECEIVED:
                self._peer_settings.set()
            elif kind == GOAWAY_RECEIVED:
                self._peer_goaway(event[2])

    def _peer_goaway(self, last_stream_id: int) -> None:
        """The peer is closing the connection: no new streams here; those above `last_stream_id`
        were never processed and fail as refused (safe to send elsewhere); the others finish."""
        self.goaway = True
        for stream_id, exchange in list(self._exchanges.items()):
            if stream_id > last_stream_id:
                self._fail(exchange, UpstreamReset(detail="refused by GOAWAY", refused=True))

    @staticmethod
    def _reset_error(code: int, *, by_peer: bool) -> ProxyError:
        if not by_peer:
            return UpstreamProtocolError(detail="malformed response")
        refused = code == ErrorCode.REFUSED_STREAM
        name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
        return UpstreamReset(detail=f"stream reset ({name})", refused=refused)

    def _response(self, stream_id: int, pairs: list[tuple[bytes, bytes]], ended: bool) -> None:
        """A final response head (the codec checked it: `:status` first, three digits)."""
        exchange = self._exchanges.get(stream_id)
        if exchange is None:
            return
        headers = Headers(fields_from_h2(pairs, from_mesh=self.mesh_peer))
        cl = headers.get(b"content-length")
        length = int(cl) if cl is not None and cl.isdigit() else None
        exchange.status = int(pairs[0][1])
        exchange.headers = headers
        exchange.body = H2Body(
            self, stream_id, length, on_done=self._body_done(stream_id), stall_timeout=self.owner.stream_idle_timeout
        )
        if ended:
            exchange.body.end()
        exchange.ready.set()
