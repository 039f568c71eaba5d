"""Per-endpoint pool of HTTP/1.1 connections: reuse the most recently idle one, open new ones on
demand, close those idle past the idle timeout (swept by the registry) or found closed by the peer.

The pool never holds a connection whose last exchange was not carried to its end: connections come
back only through `exchange_done(conn, reuse=True)`.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import structlog
import trio

from ..http.errors import UpstreamConnectFailure
from ..tls import failure_reason, peer_identity
from ..transport.h1_client import H1ClientConnection
from ..transport.tcp import TcpStream, open_tcp
from ..transport.tls_socket import TlsStream

if TYPE_CHECKING:
    from .registry import Endpoint, UpstreamTls

log = structlog.get_logger("sidecar.upstream")

MAX_IDLE = 256  # idle connections kept per endpoint; more are closed when they come back
# A connection idle longer than this is checked for a peer close (one poll syscall) before reuse;
# fresher ones are trusted, and the keep-alive race retry covers the rare loser.
CHECK_AFTER_IDLE = 1.0


class ConnectionPool:
    __slots__ = ("endpoint", "handshakes", "idle", "idle_timeout", "open_connections", "tls", "tls_session")

    def __init__(self, endpoint: Endpoint, idle_timeout: float) -> None:
        self.endpoint = endpoint
        self.idle_timeout = idle_timeout
        self.idle: list[H1ClientConnection] = []
        self.open_connections = 0
        self.tls: UpstreamTls | None = None
        self.tls_session: ssl.SSLSession | None = None  # the latest, offered for resumption
        self.handshakes = 0

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

    async def connect(self) -> H1ClientConnection:
        """Open a new connection (TCP, then TLS when the service says so). The caller bounds the
        time (connect timeout)."""
        endpoint = self.endpoint
        try:
            tcp = await open_tcp(endpoint.host, endpoint.port)
        except OSError as exc:
            raise UpstreamConnectFailure(detail=f"{endpoint.address}: {exc.strerror or exc}") from None
        stream: trio.abc.Stream = tcp
        if self.tls is not None:
            try:
                stream = await self._handshake(tcp, self.tls)
            except BaseException:
                tcp.close_now()
                raise
        self.open_connections += 1
        return H1ClientConnection(stream, self)

    async def _handshake(self, tcp: TcpStream, tls: UpstreamTls) -> TlsStream:
        endpoint = self.endpoint
        server_name = None if tls.mutual else (tls.server_name or endpoint.hostname)
        stream = TlsStream.wrap(
            tcp, tls.context, server_side=False, server_hostname=server_name, session=self.tls_session
        )
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            stream.close_now()
            reason = failure_reason(exc)
            log.warning(
                "upstream_tls_failed", endpoint=endpoint.address, reason=reason, error=str(exc.__cause__ or exc)
            )
            raise UpstreamConnectFailure(detail=f"{endpoint.address}: TLS handshake failed ({reason})") from None
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
        self.endpoint.active_requests -= 1
        if reuse and self.tls is not None and conn.exchanges == 0:
            self._keep_session(conn)
        conn.exchanges += 1
        if reuse and len(self.idle) < MAX_IDLE and not self.endpoint.removed:
            conn.idle_since = trio.current_time()
            self.idle.append(conn)
        else:
            self._close(conn)

    def _keep_session(self, conn: H1ClientConnection) -> None:
        """After a whole exchange the server's session ticket has arrived: keep it for resumption."""
        stream = conn.wire.stream
        if isinstance(stream, TlsStream):
            session = stream.session
            if session is not None and session.has_ticket:
                self.tls_session = session

    def _close(self, conn: H1ClientConnection) -> None:
        self.open_connections -= 1
        conn.close()

    def sweep(self, now: float) -> None:
        """Close idle connections older than the idle timeout."""
        if not self.idle:
            return
        keep = []
        for conn in self.idle:
            if now - conn.idle_since > self.idle_timeout:
                self._close(conn)
            else:
                keep.append(conn)
        self.idle = keep

    def close_idle(self) -> None:
        for conn in self.idle:
            self._close(conn)
        self.idle = []
