"""sidecar.transport.listener: what a drain cancels, and the watchdog's look for clients that hung up
(real socket pairs: both read the kernel's view of the socket)."""

from __future__ import annotations

import socket

from sidecar.transport.listener import ConnectionTimer, cancel_hung_up, without_pending_bytes


def test_a_drain_spares_an_idle_connection_whose_next_request_is_already_waiting() -> None:
    quiet_ours, quiet_theirs = socket.socketpair()
    busy_ours, busy_theirs = socket.socketpair()
    with quiet_ours, quiet_theirs, busy_ours, busy_theirs:
        busy_theirs.sendall(b"POST /orders HTTP/1.1\r\n")  # arrived, not read yet
        quiet, busy, memory = (
            ConnectionTimer(quiet_ours.fileno()),
            ConnectionTimer(busy_ours.fileno()),
            ConnectionTimer(),
        )
        assert without_pending_bytes([quiet, busy, memory]) == [quiet, memory]
        assert without_pending_bytes([]) == []


async def test_the_watchdog_cancels_only_connections_whose_peer_hung_up() -> None:
    left_ours, left_theirs = socket.socketpair()
    talking_ours, talking_theirs = socket.socketpair()
    with left_ours, talking_ours, talking_theirs:
        left_theirs.close()  # the client went away
        talking_theirs.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is not a hang-up
        left, talking = ConnectionTimer(left_ours.fileno()), ConnectionTimer(talking_ours.fileno())
        cancel_hung_up({left.fd: left, talking.fd: talking})
        assert left.scope.cancel_called and not talking.scope.cancel_called
