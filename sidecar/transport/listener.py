"""Accepting connections: bind, accept loop, per-listener connection count, and drain.

A `Listener` owns its listening sockets and knows how many connections it has open. Draining a
listener stops its accept loop, closes its sockets (new connections are refused), and cancels the
connections that sit idle between requests (but for those whose next request already waits unread
on the socket); busy ones finish their request and close. Protocols
that can say so on a busy connection (HTTP/2's GOAWAY) wait for `drain_started`.

Header read timeouts are enforced here too, by one watchdog task per listener rather than a cancel
scope per request: each connection keeps a `ConnectionTimer` whose deadline it moves as it starts
and stops waiting for a request head, and the watchdog cancels the connections past their deadline.
Precision is one tick (a fifth of the timeout, at most half a second).

The same watchdog notices clients that hang up while their request is in flight on a connection
nobody reads (an HTTP/1.1 request whose body is read, waiting for or receiving its response): the
connection sets `watch_hangup`, and each tick one `poll()` over those sockets asks for POLLRDHUP
(the peer closed or shut down its sending side). Such a connection is cancelled, which ends its
upstream try at once (HTTP/1.1 upstream connection closed, HTTP/2 stream reset), as nginx and Envoy
end a request whose client left. A client that half-closes after its request is taken as gone too.
No task and no system call per request: one poll per tick for all the connections in flight.
"""

from __future__ import annotations

import errno
import math
import select
from collections.abc import Awaitable, Callable

import trio

from ..config.schema import Address
from ..http.message import ConnectionInfo
from ..logger import get_logger
from .parking import PARK_AFTER, IdleConnections, Parkable, Parked
from .tcp import HANGUP, TcpListener, TcpStream

log = get_logger("sidecar.listener")

ACCEPT_RETRY_DELAY = 0.1  # after EMFILE/ENFILE/ENOBUFS/ENOMEM, as trio.serve_listeners does
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

ConnectionHandler = Callable[[TcpStream], Awaitable[None]]


class ConnectionTimer:
    """A connection's cancel scope, when it must have read its next request head by, and whether
    the watchdog should look for the peer hanging up (`fd`: the socket; -1 when it has none)."""

    __slots__ = (
        "deadline",
        "fd",
        "idle",
        "idle_since",
        "park_requested",
        "parkable",
        "parked",
        "scope",
        "watch_hangup",
    )

    def __init__(self, fd: int = -1) -> None:
        self.scope = trio.CancelScope()
        self.deadline = math.inf  # inf while not waiting for a head
        self.idle = False  # waiting for a head with nothing received yet: drain may close it
        self.fd = fd
        self.watch_hangup = False  # a request is in flight and nobody reads the connection
        # Parking (`parking.py`): whether the task waits between requests where it can give itself
        # up, since when, whether the watchdog asked it to, and whether it did (no task now).
        self.parkable = False
        self.idle_since = 0.0
        self.park_requested = False
        self.parked = False


def stream_fd(stream: object) -> int:
    """The socket under a stream (TCP or TLS), or -1 (in-memory streams in tests)."""
    fileno = getattr(stream, "fileno", None)
    return fileno() if fileno is not None else -1


class Listener:
    def __init__(self, name: str, address: Address) -> None:
        self.name = name
        self.address = address
        self.sockets: list[TcpListener] = []
        self.connections = 0  # open now
        self.accepted = 0  # since start
        self.draining = False
        self.timers: set[ConnectionTimer] = set()  # one per open connection
        self.tick = 0.5  # watchdog period, seconds
        self.drain_started = trio.Event()
        self.task_name = f"{name} connection"  # one string for all its connection tasks, not one each
        self.idle_connections = IdleConnections()  # parked: idle for park_after, without a task
        self.park_after = PARK_AFTER
        # Told of a request answered before it could become a `Request` (a malformed head, say), with
        # (connection, protocol, status, reason): telemetry counts and logs it like any other.
        self.rejected: Callable[[ConnectionInfo, str, int, str], None] | None = None
        self._accepting = trio.CancelScope()
        self._quiet = trio.Event()

    @property
    def bound_port(self) -> int:
        return self.sockets[0].port

    async def bind(self) -> None:
        """Listen on the address; an OSError names the listener and the address."""
        host = self.address.host.strip("[]")
        try:
            infos = await trio.socket.getaddrinfo(host, self.address.port, type=trio.socket.SOCK_STREAM)
            self.sockets = [TcpListener.bind(str(infos[0][4][0]), self.address.port)]
        except OSError as error:
            message = f"the {self.name} listener cannot listen on {self.address}: {error.strerror or error}"
            raise OSError(error.errno, message) from None

    def bind_ipv6_twin(self) -> bool:
        """Also listen on the IPv6 counterpart of an IPv4 wildcard or loopback address (`::` for
        0.0.0.0, `::1` for 127.0.0.1), same port: where transparent capture redirects IPv6
        connections (ip6tables' REDIRECT sends them to ::1 or the interface's own address).
        True when the listener takes IPv6 connections (already, or now through its twin); False
        when it has no such twin or the twin cannot be bound (no IPv6 here, ::1 missing)."""
        if any(":" in str(s.sock.getsockname()[0]) for s in self.sockets):
            return True
        twin = {"0.0.0.0": "::", "127.0.0.1": "::1"}.get(self.address.host)
        if twin is None:
            return False
        try:
            self.sockets.append(TcpListener.bind(twin, self.sockets[0].port, v6_only=True))
        except OSError:  # no IPv6 here (or ::1 missing): IPv4 only, as before
            return False
        return True

    async def serve(self, on_connection: ConnectionHandler, handler_nursery: trio.Nursery) -> None:
        """Accept until drained; each connection runs in `handler_nursery`."""
        handler_nursery.start_soon(self._watch_timers)
        handler_nursery.start_soon(self._resume_parked, handler_nursery)
        with self._accepting:
            async with trio.open_nursery() as nursery:
                for sock in self.sockets:
                    nursery.start_soon(self._accept_loop, sock, on_connection, handler_nursery)

    async def _accept_loop(
        self, sock: TcpListener, on_connection: ConnectionHandler, handler_nursery: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await sock.accept()
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    log.error("accept_failed", listener=self.name, error=exc.strerror)
                    await trio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                raise
            handler_nursery.start_soon(self._run_connection, stream, on_connection, name=self.task_name)

    async def _run_connection(self, stream: TcpStream, on_connection: ConnectionHandler) -> None:
        self.connections += 1
        self.accepted += 1
        parked = False
        try:
            await on_connection(stream)
        except Parked:
            parked = True  # the connection waits in `idle_connections`, open and counted
        except Exception:
            # A bug in one connection must not take the listener (or the process) down with it.
            log.exception("connection_failed", listener=self.name)
        finally:
            if not parked:
                await trio.aclose_forcefully(stream)
                self._connection_ended()

    def park(self, fd: int, server: Parkable) -> None:
        """Called by a protocol server whose task gives itself up (it raises `Parked` next)."""
        self.idle_connections.park(fd, server)

    async def _resume_parked(self, handler_nursery: trio.Nursery) -> None:
        def resume(server: Parkable) -> None:
            handler_nursery.start_soon(self._run_resumed, server, name=self.task_name)

        try:
            await self.idle_connections.run(resume)
        finally:
            self.idle_connections.shut()  # the listener is done (drained, or the process stops)

    async def _run_resumed(self, server: Parkable) -> None:
        """A parked connection's new task, from its client's next bytes to its end (or next park)."""
        parked = False
        try:
            await server.resume()
        except Parked:
            parked = True
        except Exception:
            log.exception("connection_failed", listener=self.name)
        finally:
            if not parked:
                server.close_now()
                self._connection_ended()

    def _connection_ended(self) -> None:
        self.connections -= 1
        if self.connections == 0:
            self._quiet.set()

    def _close_parked(self, timer: ConnectionTimer) -> None:
        """End a parked connection (its deadline passed, or a drain): no task to cancel, so close it."""
        self.timers.discard(timer)
        if self.idle_connections.close(timer.fd):
            self._connection_ended()

    async def _watch_timers(self) -> None:
        """Until the listener is drained and its last connection has ended."""
        while not (self.draining and self.connections == 0):
            await trio.sleep(self.tick)
            now = trio.current_time()
            watched: dict[int, ConnectionTimer] | None = None
            for timer in list(self.timers):
                if timer.deadline <= now:
                    if timer.parked:
                        self._close_parked(timer)
                    else:
                        timer.scope.cancel()
                elif timer.parkable and not timer.park_requested and now - timer.idle_since >= self.park_after:
                    timer.park_requested = True
                    trio.lowlevel.notify_closing(timer.fd)  # wakes its wait: it parks itself
                elif timer.watch_hangup and timer.fd >= 0:
                    if watched is None:
                        watched = {}
                    watched[timer.fd] = timer
            if watched:
                cancel_hung_up(watched)
        self.idle_connections.shut()

    def drain(self) -> None:
        """Stop accepting, refuse new connections, and close the idle ones."""
        if self.draining:
            return
        self.draining = True
        self.drain_started.set()
        self._accepting.cancel()
        for sock in self.sockets:
            sock.close()
        for timer in without_pending_bytes([timer for timer in self.timers if timer.idle]):
            if timer.parked:
                self._close_parked(timer)
            else:
                timer.scope.cancel()

    async def wait_quiet(self) -> None:
        """Return once no connection is open."""
        while self.connections:
            self._quiet = trio.Event()
            await self._quiet.wait()


def without_pending_bytes(timers: list[ConnectionTimer]) -> list[ConnectionTimer]:
    """The idle connections among `timers` with nothing waiting to be read. One with bytes waiting
    holds a request its server has not read yet (a caller reusing its pooled connection as the drain
    starts): it is served, with `Connection: close`, rather than cut (a POST cut there could not be
    sent again)."""
    if not timers:
        return []
    poller = select.poll()
    for timer in timers:
        if timer.fd >= 0:
            poller.register(timer.fd, select.POLLIN)
    pending = {fd for fd, _ in poller.poll(0)}
    return [timer for timer in timers if timer.fd not in pending]


def cancel_hung_up(watched: dict[int, ConnectionTimer]) -> None:
    """Cancel the connections (by socket) whose peer has hung up."""
    poller = select.poll()
    for fd in watched:
        poller.register(fd, select.POLLRDHUP)
    for fd, events in poller.poll(0):
        if events & HANGUP:
            watched[fd].scope.cancel()
