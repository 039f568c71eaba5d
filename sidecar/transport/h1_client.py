"""HTTP/1.1 client side of one upstream connection: a `Request` out, a streaming `Response` back.

`send()` writes the head (and, with the first body chunk, in one write), pumps the rest of the
request body in the request's nursery while the response head is read (full duplex), and returns
a response whose body tells the owner how the exchange ended. The owner is whoever opened the
connection (the pool, in `upstream/`), seen through `H1ClientOwner`, the protocol defined here. The
contract: once `send()` is called, `owner.exchange_done(conn, reuse)` is called exactly once — at the
end of the response body, or on any failure or cancellation inside `send()` itself. A connection
is reused only when both the request and the response were carried to their end and the peer allows
keep-alive. A response body that stalls for the owner's `stream_idle_timeout` (read as its head
arrives, so a reload's value applies to open connections too) ends as a timeout.

`upgrade()` is the other exchange: a WebSocket upgrade on a dedicated connection that never goes
back to the pool. A `101` answer hands the connection over in the response body (`UpgradedBody`,
released when the tunnel ends); any other answer is an ordinary response, after which it closes.
"""

from __future__ import annotations

import select
from typing import Protocol

import trio

from ..http.errors import DownstreamGone, ProxyError, UpstreamProtocolError, UpstreamReset
from ..http.h1 import (
    CHUNKED,
    UNTIL_CLOSE,
    ProtocolViolation,
    ResponseHead,
    chunk_bytes,
    last_chunk_bytes,
    parse_response_head,
    request_head_bytes,
    response_body_length,
    wants_keep_alive,
)
from ..http.message import EMPTY_BODY, Body, Request, Response
from .body import WireBody
from .tcp import HANGUP, TcpStream
from .tunnel import UpgradedBody
from .wire import Wire

MAX_RESPONSE_HEAD = 256 * 1024
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _truncated(message: str) -> Exception:
    return UpstreamReset("upstream closed the connection mid-response", detail=message)


def _violation(violation: ProtocolViolation) -> Exception:
    return UpstreamProtocolError(detail=str(violation))


class H1ClientOwner(Protocol):
    """What an HTTP/1.1 client connection needs of its owner: where its exchanges end, and how long a
    response body may stall."""

    @property
    def stream_idle_timeout(self) -> float | None:
        """Seconds a response body may go without a byte before it ends (None: never)."""
        ...

    def exchange_done(self, conn: H1ClientConnection, reuse: bool) -> None:
        """The exchange on `conn` ended; `reuse`: the connection may carry another one."""
        ...


class H1ClientConnection:
    __slots__ = ("_request_error", "_request_sent", "exchanges", "generation", "idle_since", "owner", "wire")

    def __init__(self, stream: trio.abc.Stream, owner: H1ClientOwner) -> None:
        self.wire = Wire(stream)
        self.owner = owner
        self.idle_since = 0.0
        self.generation = 0  # the owner's, when it opened this connection (see ConnectionPool.retire_connections)
        self.exchanges = 0  # completed on this connection
        self._request_sent = False
        self._request_error: BaseException | None = None

    def close(self) -> None:
        self.wire.close_now()

    def peer_closed(self) -> bool:
        """Whether an idle connection was closed by its peer (its FIN, or an error) or, in
        plaintext, has anything to read (junk). Under TLS readable bytes may be a session ticket, so
        only the peer's hang-up counts (POLLRDHUP: it shut down its sending side)."""
        if self.wire.buf:
            return True
        stream = self.wire.stream
        fileno = getattr(stream, "fileno", None)
        if fileno is None:
            return False
        poller = select.poll()
        poller.register(fileno(), HANGUP | select.POLLIN if isinstance(stream, TcpStream) else HANGUP)
        return bool(poller.poll(0))

    async def send(self, request: Request) -> Response:
        try:
            return await self._send(request)
        except BaseException:
            self.owner.exchange_done(self, False)
            raise

    async def _send(self, request: Request) -> Response:
        body = request.body
        length = body.length
        framing = CHUNKED if length is None else length
        head = request_head_bytes(request.method, request.target, request.headers, framing)
        self._request_error = None
        if framing == 0:
            self._request_sent = True
            try:
                await self.wire.send(head)
            except _STREAM_ERRORS as exc:
                raise UpstreamReset(detail=f"write failed: {exc!r}", before_response=True) from None
        else:
            self._request_sent = False
            nursery = request.task_nursery
            if nursery is not None:
                nursery.start_soon(self._pump, body, head, framing)
            else:
                await self._pump(body, head, framing)
        response_head = await self._read_head()
        try:
            framing = response_body_length(response_head, request.method)
        except ProtocolViolation as exc:
            raise UpstreamProtocolError(detail=str(exc)) from None
        reuse = framing != UNTIL_CLOSE and wants_keep_alive(
            response_head.minor, response_head.headers, response_head.values(b"connection")
        )
        response_body: Body
        if framing == 0:
            response_body = EMPTY_BODY
            self.owner.exchange_done(self, reuse and self._request_sent)
        else:
            response_body = WireBody(
                self.wire,
                framing,
                truncated=_truncated,
                violation=_violation,
                on_end=self._on_end if reuse else self._on_abort,
                on_abort=self._on_abort,
                stall_timeout=self.owner.stream_idle_timeout,
            )
        return Response(response_head.status, response_head.headers, response_body, response_head.reason)

    async def upgrade(self, request: Request, tunnel_idle_timeout: float) -> Response:
        """Send a bodiless upgrade request; the connection is released (closed) exactly once, by the
        end of the response body or of the tunnel, or here on failure."""
        try:
            return await self._upgrade(request, tunnel_idle_timeout)
        except BaseException:
            self.owner.exchange_done(self, False)
            raise

    async def _upgrade(self, request: Request, tunnel_idle_timeout: float) -> Response:
        self._request_error = None
        try:
            await self.wire.send(request_head_bytes(request.method, request.target, request.headers, 0))
        except _STREAM_ERRORS as exc:
            raise UpstreamReset(detail=f"write failed: {exc!r}", before_response=True) from None
        head = await self._read_head(upgrade=True)
        body: Body
        if head.status == 101:
            body = UpgradedBody(self.wire, self._on_abort, tunnel_idle_timeout)
            return Response(101, head.headers, body, head.reason)
        try:
            framing = response_body_length(head, request.method)
        except ProtocolViolation as exc:
            raise UpstreamProtocolError(detail=str(exc)) from None
        if framing == 0:
            body = EMPTY_BODY
            self.owner.exchange_done(self, False)
        else:
            # Never pooled: it was opened for this upgrade alone (HTTP/1.1, whatever the service speaks).
            end = self._on_abort
            body = WireBody(self.wire, framing, truncated=_truncated, violation=_violation, on_end=end, on_abort=end)
        return Response(head.status, head.headers, body, head.reason)

    def _on_end(self) -> None:
        self.owner.exchange_done(self, self._request_sent)

    def _on_abort(self) -> None:
        self.owner.exchange_done(self, False)

    async def _read_head(self, *, upgrade: bool = False) -> ResponseHead:
        """The final response head; with `upgrade`, a 101 is final too (other 1xx are skipped)."""
        wire = self.wire
        buf = wire.buf
        searched = 0
        while True:
            end = buf.find(b"\r\n\r\n", max(0, searched - 3))
            if end >= 0:
                block = bytes(buf[:end])
                del buf[: end + 4]
                try:
                    head = parse_response_head(block)
                except ProtocolViolation as exc:
                    raise UpstreamProtocolError(detail=str(exc)) from None
                if 100 <= head.status < 200 and not (upgrade and head.status == 101):
                    # interim responses: we answer 100-continue ourselves
                    searched = 0
                    continue
                return head
            if len(buf) > MAX_RESPONSE_HEAD:
                raise UpstreamProtocolError(detail="response head too large")
            searched = len(buf)
            # Nothing back yet right after the request went out: wait before the first read.
            if not await (wire.fill() if buf else wire.fill_when_readable()):
                if self._request_error is not None:
                    raise self._request_error
                raise UpstreamReset(detail="closed before a response", before_response=not buf)

    async def _pump(self, body: Body, head: bytes, framing: int) -> None:
        """Stream the request body upstream; on a downstream failure, cut the upstream connection."""
        send = self.wire.send
        try:
            first = await body.read()
            if framing == CHUNKED:
                if not first:
                    await send(head + last_chunk_bytes(body.trailers))
                else:
                    await send(head + chunk_bytes(first))
                    while chunk := await body.read():
                        await send(chunk_bytes(chunk))
                    await send(last_chunk_bytes(body.trailers))
            else:
                await send(head + first)
                while chunk := await body.read():
                    await send(chunk)
            self._request_sent = True
        except (ProxyError, DownstreamGone) as exc:
            # The downstream body was bad or went away: the upstream request can never be whole.
            self._request_error = exc
            self.wire.close_now()
        except _STREAM_ERRORS:
            pass  # upstream stopped reading; its response (often an early error) tells the rest
