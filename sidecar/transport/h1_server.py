"""HTTP/1.1 server side of a connection: bytes from a downstream peer in, `Request`s to a handler,
`Response`s back out, streaming, keep-alive, `100 Continue`, `Connection: close` while draining.

One task per connection runs `H1Server.serve`. A request with a body gets its own nursery that
lives until its response is written, so an upstream client can pump the body while the response
comes back (full duplex, as a proxy must). Errors found before the handler (malformed heads,
smuggling shapes, limits) are answered here (`http/replies.py`) and the connection closes; what
escapes the handler is answered by `handler.call_guarded`.

A bodiless WebSocket upgrade request becomes a `WebSocketRequest`. When the upstream answers `101`,
the 101 head goes out and this connection is spliced with the upstream one (`tunnel.py`) until the
tunnel ends; it never carries HTTP again. While spliced the connection is busy, not idle: drain
waits for it (up to `drain_timeout`) and the header read deadline does not apply.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import trio

from ..http.errors import BadRequest, BodyTooLarge, DownstreamGone, HeadersTooLarge, ProxyError, UpstreamProtocolError
from ..http.h1 import (
    CHUNKED,
    UNTIL_CLOSE,
    ProtocolViolation,
    RequestHead,
    TrailersTooLarge,
    chunk_bytes,
    last_chunk_bytes,
    parse_request_head,
    request_body_length,
    response_head_bytes,
    wants_keep_alive,
)
from ..http.message import EMPTY_BODY, Body, ConnectionInfo, Request, Response, WebSocketRequest
from ..http.replies import error_response
from ..http.websocket import is_websocket_upgrade
from ..logger import get_logger
from .body import WireBody
from .handler import Handler, call_guarded
from .listener import ConnectionTimer, Listener, stream_fd
from .parking import Parked
from .tcp import TcpStream
from .tls_socket import TlsStream
from .tunnel import UpgradedBody, splice
from .wire import Wire

log = get_logger("sidecar.h1")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_request_headers: int = 64 * 1024
    max_request_body: int = 0  # 0 = unlimited
    header_read_timeout: float = 10.0


class _Abort(Exception):
    """The response broke after its head went out: the only honest signal left is closing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _downstream_gone(message: str) -> Exception:
    return DownstreamGone(message)


def _bad_body(violation: ProtocolViolation) -> Exception:
    if isinstance(violation, TrailersTooLarge):
        return HeadersTooLarge("request trailer fields too large")
    return BadRequest(str(violation))


class H1Server:
    __slots__ = ("conn", "handler", "limits", "listener", "scheme", "timer", "wire")

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: ConnectionInfo,
        handler: Handler,
        limits: ServerLimits,
        listener: Listener,
    ) -> None:
        self.wire = Wire(stream)
        self.conn = conn
        self.handler = handler
        self.limits = limits
        self.listener = listener
        self.scheme = b"https" if conn.tls else b"http"
        self.timer = ConnectionTimer(stream_fd(stream))

    async def serve(self) -> None:
        await self._serve(resumed=False)

    async def resume(self) -> None:
        """Serve again after the connection was parked (`parking.py`): its next bytes are waiting."""
        await self._serve(resumed=True)

    def close_now(self) -> None:
        self.wire.close_now()

    async def _serve(self, *, resumed: bool) -> None:
        timer = self.timer
        timers = self.listener.timers
        timers.add(timer)
        wire = self.wire
        stream = wire.stream
        sock = stream.sock if isinstance(stream, TcpStream | TlsStream) else None
        tls = stream.sock if isinstance(stream, TlsStream) else None  # decrypted bytes may wait in it
        parked = False
        if resumed:
            timer.scope = trio.CancelScope()  # a scope is entered once: the parked task's is spent
            timer.parked = False
        try:
            with timer.scope:
                if resumed and not await wire.fill():
                    return
                while await self._serve_one():
                    if sock is None or wire.buf or self.listener.draining or (tls is not None and tls.pending()):
                        continue
                    # Idle between requests (the client has not read our response yet, so its next
                    # request cannot be here): wait at the top of the connection's stack, where an
                    # idle keep-alive connection holds the fewest frames, then read what came. The
                    # header read deadline starts now and covers the head that follows. Idle long
                    # enough, the watchdog asks this task to park the connection and end.
                    now = trio.current_time()
                    timer.deadline = now + self.limits.header_read_timeout
                    timer.idle = True
                    timer.idle_since = now
                    timer.parkable = True
                    timer.park_requested = False
                    try:
                        await trio.lowlevel.wait_readable(sock)
                    except trio.ClosedResourceError:
                        if not timer.park_requested:
                            return  # the stream was closed under us
                        self.listener.park(sock.fileno(), self)
                        timer.parked = parked = True
                        raise Parked from None
                    finally:
                        timer.parkable = False
                    timer.idle = False
                    if not await wire.fill():
                        break
        except* DownstreamGone:
            pass  # the client went away (raised bare, or from a request's nursery): nothing to answer
        finally:
            if not parked:
                timers.discard(timer)

    async def _serve_one(self) -> bool:
        """Serve one request; True when the connection may carry another."""
        if self.listener.draining and not self.wire.buf:
            return False
        try:
            block = await self._read_head()
            if block is None:
                return False
            head = parse_request_head(block)
            request, keep_alive = self._request_from(head)
        except ProxyError as error:
            await self._reply_and_close(error)
            rejected = self.listener.rejected
            if rejected is not None:
                rejected(self.conn, "HTTP/1.1", error.status, error.reason)
            return False
        body = request.body
        timer = self.timer
        try:
            if body is EMPTY_BODY:
                timer.watch_hangup = True  # nothing more to read for this request: a hang-up is the end
                response = await call_guarded(self.handler, request)
                keep_alive = await self._write(request, response, keep_alive)
            else:
                async with trio.open_nursery() as nursery:
                    request.task_nursery = nursery
                    response = await call_guarded(self.handler, request)
                    keep_alive = await self._write(request, response, keep_alive)
                    nursery.cancel_scope.cancel()
                if not getattr(body, "done", True) or getattr(body, "failed", False):
                    keep_alive = False  # the rest of the body is still on the wire, or it was bad
        finally:
            timer.watch_hangup = False
        return keep_alive

    async def _read_head(self) -> bytes | None:
        """The next request head (without its blank line), or None when the connection should end.

        While waiting, the connection's timer carries the header read deadline; the listener's
        watchdog cancels the connection when it passes (and drain cancels it while idle)."""
        wire = self.wire
        buf = wire.buf
        end = self._find_head_end(buf, 0)
        timer = self.timer
        if end < 0:
            max_head = self.limits.max_request_headers
            if timer.deadline == math.inf:  # else the idle wait in `serve` started it
                timer.deadline = trio.current_time() + self.limits.header_read_timeout
            timer.idle = not buf
            try:
                while end < 0:
                    if len(buf) > max_head:
                        raise HeadersTooLarge()
                    searched = len(buf)
                    if not await wire.fill():
                        return None
                    timer.idle = False
                    end = self._find_head_end(buf, searched)
            finally:
                timer.deadline = math.inf
                timer.idle = False
        else:
            timer.deadline = math.inf  # the head was read whole after the idle wait in `serve`
        if end > self.limits.max_request_headers:
            raise HeadersTooLarge()
        block = bytes(buf[:end])
        del buf[: end + 4]
        return block

    @staticmethod
    def _find_head_end(buf: bytearray, searched: int) -> int:
        while buf[:2] == b"\r\n":  # RFC 9112 §2.2: ignore empty lines before a request line
            del buf[:2]
            searched = 0
        end = buf.find(b"\r\n\r\n", max(0, searched - 3))
        if end < 0:
            # A head ended by bare LFs would never complete: refuse it now, not at the timeout.
            lf = buf.find(b"\n")
            if lf == 0 or (lf > 0 and buf[lf - 1] != 13):
                raise BadRequest("bare LF in request head")
        return end

    def _request_from(self, head: RequestHead) -> tuple[Request, bool]:
        headers = head.headers
        target = head.target
        uri_authority: bytes | None = None
        if target[:1] != b"/":
            lowered = target[:8].lower()
            if lowered.startswith(b"http://") or lowered.startswith(b"https://"):
                rest = target[target.index(b"//") + 2 :]
                cut = len(rest)
                for sep in (b"/", b"?"):
                    i = rest.find(sep)
                    if 0 <= i < cut:
                        cut = i
                uri_authority = rest[:cut]
                path = rest[cut:]
                target = path if path[:1] == b"/" else b"/" + path
                if not uri_authority:
                    raise BadRequest("absolute-form target without a host")
            elif not (target == b"*" and head.method == b"OPTIONS"):
                raise BadRequest("unsupported request target")
        hosts = head.values(b"host")
        if len(hosts) > 1:
            raise BadRequest("more than one Host header")
        if uri_authority is not None:
            headers.set(b"Host", uri_authority)  # RFC 9112 §3.2.2: the target's authority wins
            authority: bytes | None = uri_authority
        elif hosts:
            authority = hosts[0]
        elif head.minor == 1:
            raise BadRequest("missing Host header")
        else:
            authority = None
        framing = request_body_length(head)
        keep_alive = wants_keep_alive(head.minor, headers, head.values(b"connection"))
        body: Body
        if framing == 0:
            body = EMPTY_BODY
        else:
            limit = self.limits.max_request_body
            if limit and framing > limit:
                raise BodyTooLarge()
            expect = head.values(b"expect")
            on_first_read = None
            if expect and expect[0].lower() == b"100-continue" and head.minor == 1:
                on_first_read = self._send_continue
            body = WireBody(
                self.wire,
                framing,
                truncated=_downstream_gone,
                violation=_bad_body,
                on_end=self._body_read,
                limit=limit,
                max_trailers=self.limits.max_request_headers,
                on_first_read=on_first_read,
            )
        if head.values(b"expect"):
            headers.remove({b"expect"})  # we answer 100-continue ourselves, on first read
        # Usually absent: this one look is all an ordinary request pays. Only a bodiless request may
        # switch (bytes after its head belong to the new protocol, not to a body).
        upgrade = head.values(b"upgrade")
        websocket = (
            upgrade
            and framing == 0
            and is_websocket_upgrade(head.method, head.minor, upgrade, head.values(b"connection"))
        )
        request = (WebSocketRequest if websocket else Request)(
            head.method,
            target,
            authority,
            headers,
            body,
            self.conn,
            http_version="1.1" if head.minor else "1.0",
            scheme=self.scheme,
        )
        return request, keep_alive

    def _body_read(self) -> None:
        """The request body was read to its end: from now on a hang-up means the client left."""
        self.timer.watch_hangup = True

    async def _send_continue(self) -> None:
        try:
            await self.wire.send(CONTINUE)
        except _STREAM_ERRORS:
            raise DownstreamGone("client went away") from None

    async def _write(self, request: Request, response: Response, keep_alive: bool) -> bool:
        """Write `response`; returns whether the connection stays open. The request's observer
        hears what went out: the status, the body bytes and the reason of a reply made here."""
        minor = 1 if request.http_version == "1.1" else 0
        # A request body still unread when the response starts may never be read: say we close.
        request_body = request.body
        close = (
            not keep_alive
            or self.listener.draining
            or not getattr(request_body, "done", True)
            or getattr(request_body, "failed", False)
        )
        status = response.status
        body = response.body
        send = self.wire.send
        sent = 0  # body bytes written
        reason: str | None = None
        try:
            if request.method == b"HEAD" or status in _NO_BODY_STATUS or status < 200:
                if status == 101:
                    await self._switch_protocols(response)
                    return False
                head = response_head_bytes(
                    status, response.reason, response.headers, 0, minor=minor, close=close, head_only=True
                )
                await send(head)
                return not close
            length = body.length
            if length is None:
                framing = CHUNKED if minor else UNTIL_CLOSE
                if framing == UNTIL_CLOSE:
                    close = True
            else:
                framing = length
            try:
                first = await body.read() if framing else b""
            except ProxyError as error:  # nothing sent yet: we can still answer properly
                status, reason = error.status, error.reason
                await self._reply_and_close(error, minor)
                return False
            head = response_head_bytes(status, response.reason, response.headers, framing, minor=minor, close=close)
            sent = len(first)
            if framing == CHUNKED:
                if first:
                    await send(head + chunk_bytes(first))
                    while chunk := await self._next_chunk(body):
                        await send(chunk_bytes(chunk))
                        sent += len(chunk)
                else:
                    head += last_chunk_bytes(body.trailers)
                    await send(head)
                    return not close
                await send(last_chunk_bytes(body.trailers))
            else:
                await send(head + first if first else head)
                if framing and not getattr(body, "done", False):  # one read often carries it all
                    while chunk := await self._next_chunk(body):
                        await send(chunk)
                        sent += len(chunk)
            return not close
        except _STREAM_ERRORS:
            raise DownstreamGone("client went away") from None
        except _Abort as abort:
            reason = abort.reason
            raise DownstreamGone("response aborted") from None
        finally:
            try:
                observer = request.observer
                if observer is not None:
                    observer.response_sent(status, sent, reason)
            finally:
                await body.aclose()

    async def _switch_protocols(self, response: Response) -> None:
        """Write the 101 head, then relay bytes between this connection and the upstream one until
        the tunnel ends (the caller closes the upstream by closing the response body)."""
        upstream = response.body
        if not isinstance(upstream, UpgradedBody):  # only an upgrade exchange upstream yields a 101
            await self._reply_and_close(UpstreamProtocolError(detail="101 without an upgraded connection"))
            return
        self.timer.watch_hangup = False  # the tunnel reads the connection from now on
        await self.wire.send(response_head_bytes(101, response.reason, response.headers, 0, head_only=True))
        await splice(self.wire, upstream.wire, upstream.idle_timeout)

    @staticmethod
    async def _next_chunk(body: Body) -> bytes:
        try:
            return await body.read()
        except ProxyError as error:
            log.info("response_aborted", reason=error.reason, detail=error.detail)
            raise _Abort(error.reason) from None

    async def _reply_and_close(self, error: ProxyError, minor: int = 1) -> None:
        response = error_response(error)
        data = await response.body.read()
        head = response_head_bytes(response.status, b"", response.headers, len(data), minor=minor, close=True)
        with contextlib.suppress(*_STREAM_ERRORS):
            await self.wire.send(head + data)
