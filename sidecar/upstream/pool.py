"""Per-endpoint pool of upstream connections.

HTTP/1.1: reuse the most recently idle connection, open new ones on demand, close those idle past
the idle timeout (swept by the registry) or found closed by the peer; a connection comes back only
through `exchange_done(conn, reuse=True)`, after its exchange was carried to the end.
HTTP/2 (chosen by ALPN on TLS, or by `protocol: http2` / `app_protocol: h2c` in plaintext): a few
shared connections, each taking streams up to the peer's MAX_CONCURRENT_STREAMS; another opens when
they are full. Their reader tasks run in the registry's nursery (`background`).
A WebSocket upgrade takes a dedicated HTTP/1.1 connection (`connect_dedicated_http1`) that is
counted here but never pooled: it becomes the tunnel, and closes with it.

The pool is its connections' owner in the transport's terms (`H1ClientOwner`, `H2ClientOwner`):
each exchange that ends is reported here, and accounted to the endpoint (`finished()`). It sees its
endpoint through `PooledEndpoint` (where to connect, whether it left the config), and the registry
sets how to speak to it: `protocol`, `tls` (`UpstreamTls`), the timeouts, `background`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from ..http.errors import UpstreamConnectFailure
from ..logger import get_logger
from ..tls import ALPN_TCP, failure_reason, peer_identity
from ..transport.h1_client import H1ClientConnection
from ..transport.h2_client import H2ClientConnection
from ..transport.tcp import TcpStream, open_tcp
from ..transport.tls_socket import TlsStream

log = get_logger("sidecar.upstream")

MAX_IDLE = 256  # idle connections kept per endpoint; more are closed when they come back
# A connection idle longer than this is checked for a peer close (one poll syscall) before reuse:
# under load connections come back within microseconds and skip it; a connection that sat idle is
# the one a peer may have closed (a sidecar closes idle inbound connections after its
# header_read_timeout). The keep-alive race retry covers the rare loser of the remaining race.
CHECK_AFTER_IDLE = 0.1


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How to speak TLS to a service's endpoints.

    `mutual`: present our workload certificate, verify the chain to the mesh trust bundle and the
    peer's SPIFFE ID (`identity`, or any mesh identity when None); hostnames are not checked.
    Otherwise `simple`: ordinary HTTPS, verifying `server_name` (default: the endpoint's host name).
    """

    contexts: Mapping[str, ssl.SSLContext]  # by protocol (http1 | http2 | auto): each offers its ALPN
    mutual: bool
    identity: str | None = None
    server_name: str | None = None
    ca: str | None = None  # simple: the trust bundle file named in the config (None: the system's)


class PooledEndpoint(Protocol):
    """What a pool needs of its endpoint (an `endpoint.Endpoint`): where to connect and which name TLS
    verifies, whether it left the config (its connections then close once idle), and the accounting
    of each exchange that ends."""

    host: str  # an IP address
    port: int
    address: str  # host:port, as logs and errors name it
    hostname: str  # as configured, before DNS
    removed: bool

    def finished(self) -> None:
        """One exchange to the endpoint ended (it was `started()` by the caller)."""
        ...


class ConnectionPool:
    __slots__ = (
        "background",
        "endpoint",
        "generation",
        "h2_connecting",
        "h2_conns",
        "h2_seen",
        "handshakes",
        "idle",
        "idle_timeout",
        "open_connections",
        "protocol",
        "stream_idle_timeout",
        "tls",
        "tls_session",
    )

    def __init__(self, endpoint: PooledEndpoint, idle_timeout: float) -> None:
        self.endpoint = endpoint
        self.idle_timeout = idle_timeout
        self.stream_idle_timeout: float | None = None  # a response body stalled this long ends (None: never)
        self.idle: list[H1ClientConnection] = []
        self.open_connections = 0
        self.generation = 0  # bumped when the way to reach the endpoint changes: older connections are not reused
        self.tls: UpstreamTls | None = None
        # The latest session, with the context it came from: it resumes only with that context (not
        # another protocol's, nor the ones a reload put in its place).
        self.tls_session: tuple[ssl.SSLContext, ssl.SSLSession] | None = None
        self.handshakes = 0
        self.protocol = "http1"  # http1 | http2 | auto (ALPN decides; plaintext auto is HTTP/1.1)
        self.h2_conns: list[H2ClientConnection] = []
        # What the endpoint chose by ALPN on the last connection (None: no connection yet). Until it
        # says http/1.1, a connection being opened is expected to be HTTP/2: a burst of requests to
        # a new endpoint waits for it instead of each opening a connection of its own.
        self.h2_seen: bool | None = None
        self.h2_connecting: trio.Event | None = None  # set when the HTTP/2 connection being opened is up
        self.background: trio.Nursery | None = None  # where HTTP/2 reader tasks run

    def take_idle(self) -> H1ClientConnection | None:
        """The freshest idle connection that is still usable, or None."""
        idle = self.idle
        if not idle:
            return None
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            idle_for = now - conn.idle_since
            if idle_for > self.idle_timeout or (idle_for > CHECK_AFTER_IDLE and conn.peer_closed()):
                self._close(conn)
                continue
            return conn
        return None

    def take_h2(self) -> H2ClientConnection | None:
        """A shared HTTP/2 connection with a free stream slot, or None."""
        for conn in self.h2_conns:
            if conn.capacity > 0:
                return conn
        return None

    def takes_without_connecting(self) -> bool:
        """Whether a request sent here now would not open a connection, as `call._exchange` goes: an
        HTTP/2 connection with a free stream slot; an idle HTTP/1.1 connection (taken, or, when the
        peer closed it, closed first, which frees its place under `max_connections`); an HTTP/2
        connection being opened, which the request waits for (as a pending request). Changes nothing."""
        return bool(self.idle) or self.h2_connecting is not None or self.take_h2() is not None

    async def take_h2_waiting(self) -> H2ClientConnection | None:
        """As take_h2, but while an HTTP/2 connection is being opened, wait for it rather than open
        another: a burst of requests to a new endpoint shares one connection instead of each
        opening its own."""
        while True:
            conn = self.take_h2()
            pending = self.h2_connecting
            if conn is not None or pending is None:
                return conn
            await pending.wait()

    async def connect(self) -> H1ClientConnection | H2ClientConnection:
        """Open a new connection (TCP, then TLS when the service says so; HTTP/2 when ALPN or the
        config says so). An HTTP/2 connection is handed out once the peer's SETTINGS are in, so its
        stream limit is known. The caller bounds the time (connect timeout)."""
        pending = None
        expects_h2 = self.protocol == "http2" or (
            self.protocol == "auto" and self.tls is not None and self.h2_seen is not False
        )
        if expects_h2 and self.h2_connecting is None:
            pending = self.h2_connecting = trio.Event()
        try:
            return await self._connect()
        finally:
            if pending is not None:
                self.h2_connecting = None
                pending.set()

    async def _connect(self) -> H1ClientConnection | H2ClientConnection:
        stream = await self._open(self.protocol)
        # ALPN decides on TLS; in plaintext only `http2` (h2c to the app) means HTTP/2.
        use_h2 = stream.selected_alpn_protocol() == "h2" if isinstance(stream, TlsStream) else self.protocol == "http2"
        self.h2_seen = use_h2
        self.open_connections += 1
        if use_h2 and self.background is not None:
            tls = self.tls
            secure = isinstance(stream, TlsStream)
            conn = H2ClientConnection(stream, self, secure=secure, mesh_peer=tls is not None and tls.mutual)
            try:
                await conn.start(self.background)
            except BaseException:
                conn.close()
                self.open_connections -= 1
                raise
            self.h2_conns.append(conn)
            return conn
        h1 = H1ClientConnection(stream, self)
        h1.generation = self.generation
        return h1

    async def connect_dedicated_http1(self) -> H1ClientConnection:
        """A fresh HTTP/1.1 connection for an exchange that keeps it for good (a WebSocket upgrade):
        TLS offers ALPN http/1.1 only, whatever the service's protocol, and the connection never
        joins the pool (its exchange ends with `exchange_done(conn, reuse=False)`, which closes it)."""
        stream = await self._open("http1")
        self.open_connections += 1
        conn = H1ClientConnection(stream, self)
        conn.generation = self.generation
        return conn

    async def open_stream(self) -> TcpStream | TlsStream:
        """A fresh HTTP/1.1 stream to the endpoint (TLS as the service says, ALPN http/1.1) that the
        pool neither counts nor keeps: health checks. The caller bounds the time and closes it."""
        return await self._open("http1")

    async def open_opaque(self) -> TcpStream | TlsStream:
        """A fresh connection for one opaque TCP connection (a `protocol: tcp` service): plain TCP,
        or TLS as the service says (to a mesh peer, ALPN `sidecar-tcp/1`, which the peer must
        select). Counted among the open connections from `opaque_opening()` (before the connect,
        so that connects at the same moment meet `max_connections`) until `opaque_closed()`; never
        pooled. The caller bounds the time (connect timeout)."""
        stream = await self._open("tcp")
        tls = self.tls
        if tls is not None and tls.mutual and isinstance(stream, TlsStream):
            chosen = stream.selected_alpn_protocol()
            if chosen != ALPN_TCP:
                stream.close_now()
                detail = f"{self.endpoint.address}: the peer does not carry opaque TCP (ALPN {chosen or 'none'})"
                raise UpstreamConnectFailure(detail=detail)
        return stream

    def opaque_opening(self) -> None:
        """A connection for `open_opaque` is about to be opened: it counts from now."""
        self.open_connections += 1

    def opaque_closed(self, stream: TcpStream | TlsStream | None = None) -> None:
        """A connection counted by `opaque_opening` was closed (or never made: None). Its TLS
        session ticket, which came after the handshake, is kept so that the next tunnel resumes."""
        self.open_connections -= 1
        if stream is not None and self.tls is not None:
            self._keep_session(stream)

    async def _open(self, protocol: str) -> TcpStream | TlsStream:
        """TCP, then TLS when the service says so, offering the ALPN of `protocol`. The caller
        bounds the time (connect timeout)."""
        endpoint = self.endpoint
        try:
            tcp = await open_tcp(endpoint.host, endpoint.port)
        except OSError as exc:
            raise UpstreamConnectFailure(detail=f"{endpoint.address}: {exc.strerror or exc}") from None
        if self.tls is None:
            return tcp
        try:
            return await self._handshake(tcp, self.tls, protocol)
        except BaseException:
            tcp.close_now()  # before the TLS stream took the socket over (after, a no-op)
            raise

    def stream_done(self, conn: H2ClientConnection) -> None:
        """One HTTP/2 exchange on `conn` ended."""
        self.endpoint.finished()
        if self.tls is not None and conn.exchanges == 0:
            self._keep_session(conn.stream)
        conn.exchanges += 1
        if self.endpoint.removed and not conn.active:  # the endpoint left the config: its last stream ended
            conn.close()

    def connection_closed(self, conn: H2ClientConnection) -> None:
        if conn in self.h2_conns:
            self.h2_conns.remove(conn)
            self.open_connections -= 1

    async def _handshake(self, tcp: TcpStream, tls: UpstreamTls, protocol: str) -> TlsStream:
        endpoint = self.endpoint
        server_name = None if tls.mutual else (tls.server_name or endpoint.hostname)
        context = tls.contexts[protocol]
        kept = self.tls_session
        session = kept[1] if kept is not None and kept[0] is context else None
        stream = TlsStream.wrap(tcp, context, server_side=False, server_hostname=server_name, session=session)
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            stream.close_now()
            reason = failure_reason(exc)
            log.warning(
                "upstream_tls_failed", endpoint=endpoint.address, reason=reason, error=str(exc.__cause__ or exc)
            )
            raise UpstreamConnectFailure(detail=f"{endpoint.address}: TLS handshake failed ({reason})") from None
        except BaseException:  # cancelled (the connect timeout): the TLS stream owns the socket now
            stream.close_now()
            raise
        self.handshakes += 1
        if tls.mutual:
            peer = peer_identity(stream.getpeercert())
            if peer is None or (tls.identity is not None and peer != tls.identity):
                stream.close_now()
                log.warning("upstream_identity_mismatch", endpoint=endpoint.address, peer=peer, expected=tls.identity)
                raise UpstreamConnectFailure(
                    detail=f"{endpoint.address}: peer identity {peer}, expected {tls.identity or 'a mesh identity'}"
                )
        return stream

    def exchange_done(self, conn: H1ClientConnection, reuse: bool) -> None:
        """An exchange on `conn` ended; keep the connection for the next one when `reuse`."""
        self.endpoint.finished()
        if reuse and self.tls is not None and conn.exchanges == 0:
            self._keep_session(conn.wire.stream)
        conn.exchanges += 1
        if reuse and len(self.idle) < MAX_IDLE and not self.endpoint.removed and conn.generation == self.generation:
            conn.idle_since = trio.current_time()
            self.idle.append(conn)
        else:
            self._close(conn)

    def _keep_session(self, stream: trio.abc.Stream) -> None:
        """After a whole exchange the server's session ticket has arrived: keep it for resumption."""
        if isinstance(stream, TlsStream):
            session = stream.session
            if session is not None and session.has_ticket:
                self.tls_session = (stream.sock.context, session)

    def _close(self, conn: H1ClientConnection) -> None:
        self.open_connections -= 1
        conn.close()

    def sweep(self, now: float) -> None:
        """Close idle connections older than the idle timeout."""
        for h2conn in list(self.h2_conns):
            if not h2conn.active and (now - h2conn.idle_since > self.idle_timeout or self.endpoint.removed):
                h2conn.close()
        if not self.idle:
            return
        keep = []
        for conn in self.idle:
            if now - conn.idle_since > self.idle_timeout:
                self._close(conn)
            else:
                keep.append(conn)
        self.idle = keep

    def retire_connections(self) -> None:
        """The way to reach the endpoint changed (its TLS policy or protocol, by a reload): no
        connection opened the old way takes another request. Idle ones close now; busy HTTP/1.1 ones
        close when their exchange ends; busy HTTP/2 ones take no new stream and close after their
        last. A new connection is made the new way, without resuming the old session."""
        self.generation += 1
        for h2conn in list(self.h2_conns):
            if h2conn.active:
                h2conn.goaway = True
            else:
                h2conn.close()
        for conn in self.idle:
            self._close(conn)
        self.idle = []
        self.h2_seen = None
        self.tls_session = None

    def close_idle(self) -> None:
        for h2conn in list(self.h2_conns):
            if not h2conn.active:
                h2conn.close()
        for conn in self.idle:
            self._close(conn)
        self.idle = []
