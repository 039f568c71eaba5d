"""What each listener does with a connection it accepted: which protocol it speaks, and which
protocol server (HTTP/1.1, HTTP/2) or relay (opaque TCP) takes it.

- **Plaintext HTTP** (admin; outbound in explicit mode): HTTP/2 when the connection opens with the
  h2c preface, else HTTP/1.1; only the look at the preface is bounded here (by the header read
  timeout), the servers bound the rest.
- **Outbound**: a connection the app made to the listener itself is plaintext HTTP. One that
  transparent capture redirected (it has an original destination) is TCP at once when its port is
  in `capture.opaque_ports` or the Service at that destination has `protocol: tcp`, else whatever
  its first bytes say (`transport/detect.py`): HTTP to the protocol servers, TCP to
  `opaque.outbound_tcp`.
- **A tcp Service's `listen` port**: every connection to that Service, as TCP.
- **Inbound**: TLS first (the handshake bounded by the header read timeout; in permissive mode a
  caller whose first byte is not a TLS record is served in plaintext). ALPN says the rest: `h2`,
  `http/1.1`, or `sidecar-tcp/1` (a tunnel from a peer sidecar: `opaque.inbound_tunnel`). A
  plaintext caller under transparent capture may also be TCP (detected as outbound).

Each handler reads the runtime through `Serving`: the current limits, snapshot, registry and TLS
policy, so that a reload reaches the next connection.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Protocol

import trio

from ..http.message import ConnectionInfo
from ..http.sniff import Speaks
from ..logger import get_logger
from ..tls import ALPN_TCP
from ..transport.detect import detect
from ..transport.h1_server import H1Server, ServerLimits
from ..transport.h2_server import H2Server
from ..transport.listener import ConnectionHandler, Listener
from ..transport.original_dst import is_local, original_destination
from ..transport.parking import Parked
from ..transport.tcp import TcpStream
from ..transport.tls_accept import accept as tls_accept
from ..transport.tls_socket import TlsStream
from .opaque import inbound_plain, inbound_tunnel, outbound_tcp

if TYPE_CHECKING:
    from ..config.schema import Address, CaptureConfig
    from ..config.snapshot import Snapshot
    from ..pipeline.handler import Handler
    from ..security import MeshSecurity
    from ..telemetry.record import Telemetry
    from ..tls import AllowList
    from ..upstream.registry import UpstreamRegistry

log = get_logger("sidecar.server")

H2_PREFACE_START = b"PRI * HTTP/2.0"
PREFACE_WAIT = 0.005  # seconds between looks at a preface that arrived in pieces (rare)


class Serving(Protocol):
    """What the connection handlers read of the running sidecar (`server.Runtime`)."""

    limits: ServerLimits
    snapshot: Snapshot
    registry: UpstreamRegistry
    security: MeshSecurity
    allow: AllowList | None
    tls_failures: Counter[tuple[str, str]]
    listen_services: dict[Address, str]  # the tcp Service each `listen` address serves

    def current_telemetry(self) -> Telemetry: ...


def _peer(stream: TcpStream) -> tuple[str, int] | None:
    try:
        return stream.getpeername()
    except OSError:  # the peer is already gone
        return None


def _original(serving: Serving, stream: TcpStream) -> tuple[str, int] | None:
    """Where a redirected connection was going (transparent capture only: one system call)."""
    if serving.snapshot.sidecar.capture.mode != "transparent":
        return None
    return original_destination(stream.sock)


def plaintext(serving: Serving, listener: Listener, handler: Handler) -> ConnectionHandler:
    """Plaintext HTTP/1.1, or HTTP/2 with prior knowledge."""

    async def on_connection(stream: TcpStream) -> None:
        peer = _peer(stream)
        if peer is not None:
            server = await http_server(serving, stream, ConnectionInfo(*peer), handler, listener)
            if server is not None:
                await server.serve()

    return on_connection


def outbound(serving: Serving, listener: Listener, handler: Handler) -> ConnectionHandler:
    """The app's connections: explicit HTTP, or under transparent capture whatever it dialed."""

    async def on_connection(stream: TcpStream) -> None:
        peer = _peer(stream)
        if peer is None:
            return
        original = _original(serving, stream)
        conn = ConnectionInfo(*peer, original_dst=original)
        if original is None:
            server = await http_server(serving, stream, conn, handler, listener)
            if server is not None:
                await server.serve()
            return
        capture = serving.snapshot.sidecar.capture
        cluster = serving.registry.match_destination(*original)
        opaque = original[1] in capture.opaque_ports or (cluster is not None and cluster.settings.protocol == "tcp")
        speaks = Speaks.TCP if opaque else await _detect(serving, stream, capture)
        if speaks is None:
            return
        if speaks is Speaks.TCP:
            if not opaque:  # the detection took time: a reload may have come meanwhile
                capture = serving.snapshot.sidecar.capture
                cluster = serving.registry.match_destination(*original)
            telemetry = serving.current_telemetry()
            await outbound_tcp(
                stream, conn, cluster, original, telemetry=telemetry, outbound_policy=capture.outbound_policy
            )
            return
        protocol_server = H2Server if speaks is Speaks.HTTP2 else H1Server
        await protocol_server(stream, conn, handler, serving.limits, listener).serve()

    return on_connection


def tcp_service(serving: Serving, listen: Address) -> ConnectionHandler:
    """A tcp Service's own `listen` port (explicit mode): every connection is carried to the service
    that names this address now (a reload may rename it)."""
    destination = (listen.host, listen.port)

    async def on_connection(stream: TcpStream) -> None:
        peer = _peer(stream)
        if peer is None:
            return
        name = serving.listen_services.get(listen)
        await outbound_tcp(
            stream,
            ConnectionInfo(*peer),
            serving.registry.clusters.get(name) if name is not None else None,
            destination,
            telemetry=serving.current_telemetry(),
            outbound_policy="registry_only",  # a service that left the config: reset
        )

    return on_connection


def inbound(serving: Serving, listener: Listener, handler: Handler) -> ConnectionHandler:
    """Calls from other sidecars: TLS (strict, or sniffed in permissive mode), then by ALPN."""

    async def on_connection(stream: TcpStream) -> None:
        peer = _peer(stream)
        if peer is None:
            return
        original = _original(serving, stream)
        if original is not None and not is_local(original[0]):
            log.warning("inbound_not_local", peer=peer[0], destination=original[0], port=original[1])
            return  # redirected on its way to another address: not this pod's to serve
        tls = serving.security.inbound
        if tls is None:  # the loader requires tls with an inbound section; kept for code-built configs
            server = await http_server(serving, stream, ConnectionInfo(*peer, original_dst=original), handler, listener)
            if server is not None:
                await server.serve()
            return
        with trio.move_on_after(serving.limits.header_read_timeout) as deadline:
            accepted = await tls_accept(stream, peer, tls, serving.tls_failures)
        if deadline.cancelled_caught:
            serving.tls_failures["inbound", "timeout"] += 1
            log.info("tls_handshake_failed", listener="inbound", reason="timeout", peer=peer[0])
            return
        if accepted is None:
            return
        accepted.conn.original_dst = original
        if isinstance(accepted.stream, TcpStream):  # permissive mode, a plaintext caller
            await _inbound_plaintext(serving, accepted.stream, accepted.conn, handler, listener)
            return
        # The TLS stream owns the socket now (the listener's close of the TCP stream is a no-op):
        # close it here, so the peer sees the connection end when the server is done with it
        # (unless the server parked the connection: then whoever resumes it closes it).
        parked = False
        try:
            if accepted.alpn == ALPN_TCP:
                assert isinstance(accepted.stream, TlsStream)
                config = serving.snapshot.sidecar.inbound
                await inbound_tunnel(
                    accepted.stream,
                    accepted.conn,
                    telemetry=serving.current_telemetry(),
                    allow=serving.allow,
                    tcp_ports=config.tcp_ports if config is not None else (),
                    app_host=config.app.host if config is not None else "127.0.0.1",
                    port_timeout=serving.limits.header_read_timeout,
                )
            elif accepted.alpn == "h2":
                await H2Server(accepted.stream, accepted.conn, handler, serving.limits, listener).serve()
            else:
                await H1Server(accepted.stream, accepted.conn, handler, serving.limits, listener).serve()
        except Parked:
            parked = True
            raise
        finally:
            if not parked:
                await trio.aclose_forcefully(accepted.stream)

    return on_connection


async def _inbound_plaintext(
    serving: Serving, stream: TcpStream, conn: ConnectionInfo, handler: Handler, listener: Listener
) -> None:
    """Permissive mode, a plaintext caller: HTTP as ever; under transparent capture, what it
    dialed may also be TCP (detected as on the outbound side)."""
    original = conn.original_dst
    if original is None:
        server = await http_server(serving, stream, conn, handler, listener)
        if server is not None:
            await server.serve()
        return
    capture = serving.snapshot.sidecar.capture
    speaks = Speaks.TCP if original[1] in capture.opaque_ports else await _detect(serving, stream, capture)
    if speaks is None:
        return
    if speaks is Speaks.TCP:
        await inbound_plain(stream, conn, telemetry=serving.current_telemetry(), allow=serving.allow)
        return
    protocol_server = H2Server if speaks is Speaks.HTTP2 else H1Server
    await protocol_server(stream, conn, handler, serving.limits, listener).serve()


async def _detect(serving: Serving, stream: TcpStream, capture: CaptureConfig) -> Speaks | None:
    return await detect(stream, capture.detect_timeout, serving.limits.max_request_headers)


async def http_server(
    serving: Serving, stream: TcpStream, conn: ConnectionInfo, handler: Handler, listener: Listener
) -> H1Server | H2Server | None:
    """The protocol server for a plaintext HTTP connection: HTTP/2 when it opens with the h2c
    preface (prior knowledge), else HTTP/1.1; None when the caller left or sent nothing within the
    header read timeout. Only this look is bounded here; the servers bound the rest. The caller
    runs the server, so that this frame (and its timeout) is not held while the connection lives."""
    h2 = await _opens_with_preface(stream, serving.limits.header_read_timeout)
    if h2 is None:
        return None
    return (H2Server if h2 else H1Server)(stream, conn, handler, serving.limits, listener)


async def _opens_with_preface(stream: TcpStream, timeout: float) -> bool | None:
    """Whether the first bytes are the h2c preface (None: the peer left, or was silent too long)."""
    with trio.move_on_after(timeout):
        while True:
            try:
                first = await stream.peek(len(H2_PREFACE_START))
            except trio.BrokenResourceError:
                return None
            if not first:
                return None
            if first[: len(H2_PREFACE_START)] != H2_PREFACE_START[: len(first)]:
                return False  # not the preface: HTTP/1.x (no HTTP/1 request starts with "PRI * HTTP/2.0")
            if len(first) >= len(H2_PREFACE_START):
                return True
            await trio.sleep(PREFACE_WAIT)  # a preface split across packets: look again shortly
    return None
