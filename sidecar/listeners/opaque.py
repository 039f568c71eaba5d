"""Opaque TCP connections on the listeners: what is carried where, and what each leaves behind.

Outbound (`outbound_tcp`): a connection the app made to a tcp Service's `listen` port, or one that
transparent capture redirected and that is not HTTP. A matched Service is reached through
`upstream.opaque` (breakers, an endpoint per connection, outlier detection) over its `tls` mode:
to a mesh peer through the tunnel (`transport/tcp_tunnel.py`), otherwise as it is. A destination
no Service matches follows `capture.outbound_policy`: allow_any connects to it as it is (service
`passthrough`), registry_only resets the connection (reason `no_route`).

Inbound (`inbound_tunnel`, `inbound_plain`): a tunnel from a peer sidecar (its caller's identity
checked against `inbound.allow` once, before any byte is carried), or, in permissive mode under
transparent capture, a plaintext connection that is not HTTP (refused when `allow` is set: it has
no identity). A redirected connection goes to the port it was dialed on, on this pod's address;
one made to the inbound listener itself (explicit mode) to the port the tunnel names, which must
be one of `inbound.tcp_ports`, on the app's host.

Every connection that fails is reset, never left half-open, and logged with its reason.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import trio

from ..http.errors import ProxyError
from ..http.message import ConnectionInfo
from ..logger import get_logger
from ..telemetry.record import INBOUND, OUTBOUND, UNROUTED, Telemetry
from ..telemetry.tcp_record import TcpRecord
from ..transport.relay import PlainSide, Side, TunnelError, relay, reset
from ..transport.tcp import TcpStream, open_tcp
from ..transport.tcp_tunnel import TunnelSide, receive_port, send_port
from ..transport.tls_socket import TlsStream
from ..upstream.opaque import connect_opaque, release
from ..upstream.registry import APP_CONNECT_TIMEOUT, PASSTHROUGH

if TYPE_CHECKING:
    from ..tls import AllowList
    from ..upstream.registry import Cluster

log = get_logger("sidecar.tcp")

NO_ROUTE = "no_route"
UNAUTHORIZED = "unauthorized"
CONNECT_FAILURE = "upstream_connect_failure"
RESET = "upstream_reset"
BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)


def _refuse(stream: TcpStream | TlsStream, record: TcpRecord, reason: str) -> None:
    record.reason = reason
    reset(stream.sock)
    stream.close_now()
    record.finish()


async def _carry(downstream: Side, upstream: Side, record: TcpRecord) -> None:
    carried = record.carried
    await relay(downstream, upstream, carried)
    if carried.failed == "upstream":
        record.reason = RESET
    if carried.failed is not None:
        log.info("tcp_reset", service=record.service, side=carried.failed, detail=carried.detail)


async def _open_plain(host: str, port: int) -> TcpStream | None:
    with trio.move_on_after(APP_CONNECT_TIMEOUT):
        try:
            return await open_tcp(host, port)
        except OSError:
            return None
    return None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def outbound_tcp(
    stream: TcpStream,
    conn: ConnectionInfo,
    cluster: Cluster | None,
    destination: tuple[str, int],
    *,
    telemetry: Telemetry,
    outbound_policy: str,
) -> None:
    """Carry one outbound TCP connection to `cluster`, or, with None, by the outbound policy to
    `destination` (the address the app dialed) as it is."""
    dialed = _address(*destination)
    if cluster is None:
        if outbound_policy != "allow_any":
            _refuse(stream, TcpRecord(telemetry, OUTBOUND, conn, UNROUTED, dialed), NO_ROUTE)
            return
        record = TcpRecord(telemetry, OUTBOUND, conn, PASSTHROUGH, dialed)
        upstream = await _open_plain(*destination)
        if upstream is None:
            _refuse(stream, record, CONNECT_FAILURE)
            return
        record.upstream = dialed
        try:
            await _carry(PlainSide(stream), PlainSide(upstream), record)
        finally:
            upstream.close_now()
            record.finish()
        return
    record = TcpRecord(telemetry, OUTBOUND, conn, cluster.name, dialed)
    try:
        endpoint, opened = await connect_opaque(cluster, conn)
    except ProxyError as error:
        log.info("tcp_refused", service=cluster.name, reason=error.reason, detail=error.detail)
        _refuse(stream, record, error.reason)
        return
    record.upstream = endpoint.address
    try:
        tls = cluster.settings.tls
        if tls is not None and tls.mutual and isinstance(opened, TlsStream):
            await send_port(opened, cluster.settings.tunnel_port)
            upstream_side: Side = TunnelSide(opened)
        else:
            upstream_side = PlainSide(opened)
        await _carry(PlainSide(stream), upstream_side, record)
    except BROKEN:  # the tunnel broke before the relay
        record.reason = RESET
        reset(stream.sock)
    finally:
        release(endpoint, opened)
        record.finish()


async def inbound_tunnel(
    tunnel: TlsStream,
    conn: ConnectionInfo,
    *,
    telemetry: Telemetry,
    allow: AllowList | None,
    tcp_ports: tuple[int, ...],
    app_host: str,
    port_timeout: float,
) -> None:
    """Carry one tunnel from a peer sidecar to the app port it is for. A tunnel closed before it
    named its port carried nothing and leaves nothing behind (a peer's connect-only health check)."""
    if allow is not None and not allow.allows(conn.peer_identity):
        log.info("tcp_unauthorized", peer_identity=conn.peer_identity)
        _refuse(tunnel, TcpRecord(telemetry, INBOUND, conn, telemetry.service, None), UNAUTHORIZED)
        return
    first = b""
    asked: int | None = None
    ended = False
    with trio.move_on_after(port_timeout), contextlib.suppress(*BROKEN):
        try:
            asked, first = await receive_port(tunnel)
        except TunnelError:
            ended = True
    if asked is None:
        if not ended:  # no port in time, or a broken connection
            _refuse(tunnel, TcpRecord(telemetry, INBOUND, conn, telemetry.service, None), "bad_request")
        return
    record = TcpRecord(telemetry, INBOUND, conn, telemetry.service, None)
    if conn.original_dst is not None:  # redirected here: the port the caller dialed, on this pod
        host, port = conn.original_dst
    else:
        port = asked or (tcp_ports[0] if len(tcp_ports) == 1 else 0)
        host = app_host
        if port not in tcp_ports:
            log.info("tcp_port_not_open", port=asked, tcp_ports=list(tcp_ports))
            _refuse(tunnel, record, NO_ROUTE)
            return
    await _to_app(TunnelSide(tunnel, first), tunnel, host, port, record)


async def inbound_plain(
    stream: TcpStream, conn: ConnectionInfo, *, telemetry: Telemetry, allow: AllowList | None
) -> None:
    """A plaintext TCP connection redirected to the inbound listener (permissive mode): to the port
    it was dialed on, unless `allow` is set (a plaintext caller has no identity)."""
    record = TcpRecord(telemetry, INBOUND, conn, telemetry.service, None)
    if allow is not None or conn.original_dst is None:
        _refuse(stream, record, UNAUTHORIZED)
        return
    await _to_app(PlainSide(stream), stream, *conn.original_dst, record)


async def _to_app(downstream: Side, stream: TcpStream | TlsStream, host: str, port: int, record: TcpRecord) -> None:
    record.destination = _address(host, port)
    app = await _open_plain(host, port)
    if app is None:  # nothing listens there
        _refuse(stream, record, CONNECT_FAILURE)
        return
    record.upstream = record.destination
    try:
        await _carry(downstream, PlainSide(app), record)
    finally:
        app.close_now()
        record.finish()

