"""The inbound side of mutual TLS: detect TLS or plaintext, handshake under a deadline, and learn
who is calling.

`strict` mode accepts TLS only: anything else fails the handshake and is counted. `permissive` mode
looks at the first byte (a TLS record starts with 0x16, a handshake record) and serves plaintext
callers on the same port, without an identity. Every failed handshake is logged with its reason
(no client cert, unknown CA, expired, not yet valid, protocol, plaintext, timeout) and counted.
"""

from __future__ import annotations

import ssl
from collections import Counter
from dataclasses import dataclass

import trio

from ..http.message import ConnectionInfo
from ..logger import get_logger
from ..tls import failure_reason, peer_identity
from .tcp import TcpStream
from .tls_socket import TlsStream

log = get_logger("sidecar.tls")

TLS_HANDSHAKE_RECORD = 0x16


@dataclass
class InboundTls:
    """What the inbound listener needs to terminate TLS, rebuilt on each config snapshot."""

    context: ssl.SSLContext
    permissive: bool


@dataclass
class Accepted:
    stream: trio.abc.Stream
    conn: ConnectionInfo
    alpn: str | None = None  # the protocol ALPN settled on ("h2" or "http/1.1")


async def accept(
    stream: TcpStream, peer: tuple[str, int], tls: InboundTls, failures: Counter[tuple[str, str]]
) -> Accepted | None:
    """Handshake (or sniff plaintext) on a new inbound connection; None when it must be dropped.

    The caller bounds the time (the header read timeout covers the handshake) and counts
    a handshake that ran out of it."""
    host, port = peer
    if tls.permissive:
        try:
            first = await stream.peek(1)  # look, do not consume: OpenSSL reads the socket itself
        except trio.BrokenResourceError:
            return None
        if not first:
            return None
        if first[0] != TLS_HANDSHAKE_RECORD:
            return Accepted(stream, ConnectionInfo(host, port))
    ssl_stream = TlsStream.wrap(stream, tls.context, server_side=True)
    try:
        await ssl_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        ssl_stream.close_now()
        reason = failure_reason(exc)
        failures["inbound", reason] += 1
        log.info("tls_handshake_failed", listener="inbound", reason=reason, peer=host, error=str(exc.__cause__ or exc))
        return None
    except BaseException:  # cancelled (the handshake deadline): the TLS stream owns the socket now
        ssl_stream.close_now()
        raise
    identity = peer_identity(ssl_stream.getpeercert())
    conn = ConnectionInfo(host, port, tls=True, peer_identity=identity)
    return Accepted(ssl_stream, conn, alpn=ssl_stream.selected_alpn_protocol())
