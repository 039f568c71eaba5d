"""Idle keep-alive connections parked without a task.

A task costs memory while it waits: the task itself, its cancel scope and the coroutine frames of
its stack, about 5 KiB for an HTTP/1.1 connection waiting for its next request. A sidecar holds
thousands of such connections (every app's connection pool), mostly idle. So a connection that has
waited for `park_after` seconds gives its task up: the listener's watchdog wakes the waiting task
(`request_park`), which hands its protocol server to the listener's `IdleConnections` and ends. The
socket then sits in one epoll set per listener, the server object beside it (a few hundred bytes).
When the client sends its next request, or closes, the epoll set says so and the connection gets a
new task, which reads and serves as before (`Parkable.resume`).

Nothing else changes for a parked connection: it still counts as open, its header read deadline
(the keep-alive idle timeout) still runs, and a drain closes it like any idle connection.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Protocol

import trio

PARK_AFTER = 1.0  # seconds a connection waits for its next request before its task is given up


class Parked(Exception):
    """Raised out of a connection's task once the connection is parked: the task ends, the
    connection does not (its owner neither closes it nor counts it down)."""


class Parkable(Protocol):
    """A protocol server whose connection can wait without a task."""

    async def resume(self) -> None:
        """Serve the connection again, from the bytes that woke it."""
        ...

    def close_now(self) -> None:
        """Close the connection at once."""
        ...


class IdleConnections:
    """The parked connections of one listener, by socket, and the epoll set that watches them."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._parked: dict[int, Parkable] = {}
        self._shut = False

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, fd: int, server: Parkable) -> None:
        """Watch `fd` for the client's next bytes (or its hang-up) on behalf of `server`."""
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT)
        self._parked[fd] = server

    def close(self, fd: int) -> bool:
        """Close the parked connection on `fd` (its timeout, a drain); False if it is not parked."""
        server = self._take(fd)
        if server is None:
            return False
        server.close_now()
        return True

    def _take(self, fd: int) -> Parkable | None:
        server = self._parked.pop(fd, None)
        if server is not None and self._epoll is not None:
            with contextlib.suppress(OSError):  # already closed
                self._epoll.unregister(fd)
        return server

    async def run(self, resume: Callable[[Parkable], None]) -> None:
        """Hand each parked connection whose socket woke to `resume` (which gives it a task), until
        `shut`. One task for all of the listener's parked connections."""
        while not self._shut:
            if self._epoll is None:
                self._epoll = select.epoll()
            epoll = self._epoll
            try:
                await trio.lowlevel.wait_readable(epoll.fileno())
            except trio.ClosedResourceError:
                return
            for fd, _ in epoll.poll(0):
                server = self._take(fd)
                if server is not None:
                    resume(server)

    def shut(self) -> None:
        """Close every parked connection and the epoll set (the listener is done); `run` returns."""
        self._shut = True
        for fd in list(self._parked):
            self.close(fd)
        if self._epoll is not None:
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
