"""Per-endpoint pool of HTTP/1.1 connections: reuse the most recently idle one, open new ones on
demand, close those idle past the idle timeout (swept by the registry) or found closed by the peer.

The pool never holds a connection whose last exchange was not carried to its end: connections come
back only through `exchange_done(conn, reuse=True)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..http.errors import UpstreamConnectFailure
from ..transport.h1_client import H1ClientConnection
from ..transport.tcp import open_tcp

if TYPE_CHECKING:
    from .registry import Endpoint

MAX_IDLE = 256  # idle connections kept per endpoint; more are closed when they come back
# A connection idle longer than this is checked for a peer close (one poll syscall) before reuse;
# fresher ones are trusted, and the keep-alive race retry covers the rare loser.
CHECK_AFTER_IDLE = 1.0


class ConnectionPool:
    __slots__ = ("endpoint", "idle", "idle_timeout", "open_connections")

    def __init__(self, endpoint: Endpoint, idle_timeout: float) -> None:
        self.endpoint = endpoint
        self.idle_timeout = idle_timeout
        self.idle: list[H1ClientConnection] = []
        self.open_connections = 0

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
        """Open a new connection. The caller bounds the time (connect timeout)."""
        endpoint = self.endpoint
        try:
            stream = await open_tcp(endpoint.host, endpoint.port)
        except OSError as exc:
            raise UpstreamConnectFailure(detail=f"{endpoint.address}: {exc.strerror or exc}") from None
        self.open_connections += 1
        return H1ClientConnection(stream, self)

    def exchange_done(self, conn: H1ClientConnection, reuse: bool) -> None:
        """An exchange on `conn` ended; keep the connection for the next one when `reuse`."""
        self.endpoint.active_requests -= 1
        if reuse and len(self.idle) < MAX_IDLE and not self.endpoint.removed:
            conn.idle_since = trio.current_time()
            self.idle.append(conn)
        else:
            self._close(conn)

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
