"""Plain TCP streams and listeners over non-blocking stdlib sockets, leaner than trio's.

`trio.SocketStream` wraps every send and receive in several context managers and always yields to
the scheduler after a successful system call. On a proxy's hot path (four socket operations per
request) that overhead is a large share of the CPU. `TcpStream` implements the same
`trio.abc.HalfCloseableStream` contract with one system call per operation; it waits (a real
schedule point) only when the socket would block, and otherwise yields every few operations so a
fast pair of peers can never starve the other connections. TLS wraps it like any trio stream.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from typing import Protocol

import trio

HANGUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR
"""poll() events that say the peer closed, or shut down its sending side, or the socket failed."""
YIELD_EVERY = 8  # consecutive operations that did not wait before we yield anyway (fairness)
RECEIVE_SIZE = 65536

_BROKEN = (ConnectionError, TimeoutError)


class CountsStreaks(Protocol):
    """A stream that counts its operations in a row that completed without waiting (`fair_yield`)."""

    _streak: int


async def fair_yield(stream: CountsStreaks) -> None:
    """Yield to the scheduler every YIELD_EVERY operations that completed without waiting, so a
    pair of fast peers never starves the other connections (used as a method by both streams:
    `TcpStream` here and `TlsStream` in `tls_socket.py`)."""
    stream._streak += 1
    if stream._streak >= YIELD_EVERY:
        stream._streak = 0
        await trio.lowlevel.checkpoint()


class TcpStream(trio.abc.HalfCloseableStream):
    __slots__ = ("_closed", "_streak", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._closed = False
        self._streak = 0

    def getpeername(self) -> tuple[str, int]:
        peer = self.sock.getpeername()
        return str(peer[0]), int(peer[1])

    def fileno(self) -> int:
        return self.sock.fileno()

    def disown(self) -> None:
        """Hand the socket over to another owner (TLS): this stream will not close it."""
        self._closed = True

    async def peek(self, max_bytes: int) -> bytes:
        """Wait for data and look at it without consuming it (b"" when the peer closed)."""
        sock = self.sock
        while True:
            try:
                return sock.recv(max_bytes, socket.MSG_PEEK)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except _BROKEN as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    _fair = fair_yield

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        sock = self.sock
        size = max_bytes or RECEIVE_SIZE
        try:
            data = sock.recv(size)
        except BlockingIOError:
            pass
        except _BROKEN as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        except OSError as exc:
            raise self._error(exc) from exc
        else:
            await self._fair()
            return data
        while True:
            self._streak = 0
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("stream closed while receiving") from None
            try:
                return sock.recv(size)
            except BlockingIOError:
                continue
            except _BROKEN as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            except OSError as exc:
                raise self._error(exc) from exc

    async def receive_when_readable(self, max_bytes: int | None = None) -> bytes:
        """`receive_some` for data that cannot be there yet (a response to a request just sent):
        wait for the socket first, sparing the read that would only say "not yet"."""
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        self._streak = 0
        try:
            await trio.lowlevel.wait_readable(self.sock)
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("stream closed while receiving") from None
        return await self.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except _BROKEN as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        except OSError as exc:
            raise self._error(exc) from exc
        if sent == len(data):
            await self._fair()
            return
        view = memoryview(data)[sent:]
        while view:
            self._streak = 0
            try:
                await trio.lowlevel.wait_writable(sock)
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("stream closed while sending") from None
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            except _BROKEN as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            except OSError as exc:
                raise self._error(exc) from exc
            view = view[sent:]

    def try_send(self, data: bytes) -> int:
        """Send what the socket takes now, without waiting: the bytes sent (0 when it would block)."""
        if self._closed:
            return 0
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    def _error(self, exc: OSError) -> Exception:
        if self._closed or exc.errno == errno.EBADF:
            return trio.ClosedResourceError("stream is closed")
        return trio.BrokenResourceError(str(exc))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close_now(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        self.close_now()
        await trio.lowlevel.checkpoint()


async def open_tcp(host: str, port: int) -> TcpStream:
    """Connect to an IP address (names are resolved by the registry, not per connection)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((host, port))
        if code == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return TcpStream(sock)


class TcpListener:
    """A listening socket; `accept()` waits for the next connection."""

    __slots__ = ("_closed", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._closed = False

    @classmethod
    def bind(cls, host: str, port: int, backlog: int = 1024, *, v6_only: bool = False) -> TcpListener:
        """Listen on `host`:`port`; an IPv6 `host` takes IPv4 too unless `v6_only` (a second socket
        beside an IPv4 one on the same port)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6_only else 0)
            sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def accept(self) -> TcpStream:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("listener closed") from None
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            return TcpStream(conn)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
