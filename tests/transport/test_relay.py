"""sidecar.transport.relay: bytes carried both ways between two connections over real loopback TCP
pairs (the relay's `PlainSide`s take the sidecar's own `TcpStream`s): half-closes passed on while the
other direction keeps flowing, a server that speaks first, a reset on either side aborting both at
once (the other peer sees it promptly, never a hang), byte counts and live totals, backpressure, and
the same through a sidecar-tcp/1 tunnel (`TunnelSide` on both ends of a middle connection)."""

from __future__ import annotations

import hashlib
import select
import socket
import ssl
import struct
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trio

from sidecar.certs import init_ca, issue_workload
from sidecar.transport.relay import Carried, PlainSide, Side, relay
from sidecar.transport.tcp import TcpStream, open_tcp
from sidecar.transport.tcp_tunnel import TunnelSide
from sidecar.transport.tls_socket import TlsStream

PROMPT = 3.0  # seconds: what "promptly" may take on a loaded machine (a hang is forever)
MiB = 1024 * 1024


def tcp_socket_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def trio_stream(sock: socket.socket) -> trio.SocketStream:
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def hard_reset(stream: trio.SocketStream) -> None:
    """Close with SO_LINGER 0: the peer gets a RST."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


@dataclass
class Relayed:
    client: trio.SocketStream  # the app's end (downstream's peer)
    server: trio.SocketStream  # the upstream's end
    carried: Carried
    done: trio.Event = field(default_factory=trio.Event)


@asynccontextmanager
async def relayed(*, tunnel: bool = False, totals: Counter[Any] | None = None) -> AsyncIterator[Relayed]:
    """client <-> [downstream | relay | upstream] <-> server; with `tunnel`, two relays joined by a
    sidecar-tcp/1 tunnel (frames, end frames) over a middle TCP connection, as two sidecars are."""
    client_sock, down_sock = tcp_socket_pair()
    up_sock, server_sock = tcp_socket_pair()
    downstream, upstream = TcpStream(down_sock), TcpStream(up_sock)
    carried = Carried(totals=totals, keys=("received", "sent")) if totals is not None else Carried()
    handle = Relayed(trio_stream(client_sock), trio_stream(server_sock), carried)
    streams = [downstream, upstream]
    async with trio.open_nursery() as nursery:
        if tunnel:
            a_sock, b_sock = tcp_socket_pair()
            a_end, b_end = TcpStream(a_sock), TcpStream(b_sock)
            streams += [a_end, b_end]
            inner = Carried()

            async def run_b() -> None:
                await relay(TunnelSide(cast(Any, b_end)), PlainSide(upstream), inner)

            nursery.start_soon(run_b)
            first: Side = PlainSide(downstream)
            second: Side = TunnelSide(cast(Any, a_end))
        else:
            first, second = PlainSide(downstream), PlainSide(upstream)

        async def run() -> None:
            await relay(first, second, carried)
            handle.done.set()

        nursery.start_soon(run)
        try:
            yield handle
        finally:
            for peer in (handle.client, handle.server):  # ends whatever the test left open
                with suppress(OSError):
                    peer.socket.close()
            with trio.move_on_after(PROMPT):
                await handle.done.wait()
            nursery.cancel_scope.cancel()
            for stream in streams:
                stream.close_now()


async def read_to_end(stream: trio.abc.ReceiveStream, timeout: float = 10) -> bytes:
    chunks = []
    with trio.fail_after(timeout):
        while data := await stream.receive_some(65536):
            chunks.append(data)
    return b"".join(chunks)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = b""
    with trio.fail_after(5):
        while len(got) < size:
            data = await stream.receive_some(size - len(got))
            assert data, f"ended after {len(got)} of {size} bytes"
            got += data
    return got


async def sees_the_end(stream: trio.abc.ReceiveStream) -> str:
    """How the peer learns its connection is over, within PROMPT: 'eof' or 'reset' (fails on a hang;
    bytes already in flight are read past)."""
    with trio.fail_after(PROMPT):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return "reset"
            if not data:
                return "eof"


async def sees_a_reset(stream: trio.SocketStream) -> bool:
    """Whether a peer that has already read its end of the stream (EOF) learns, within PROMPT, that
    the connection was reset under it. A passive look (writing would make the relay notice): after
    a FIN, recv() answers b"" even once a RST came, but poll() says POLLHUP | POLLERR."""
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLHUP | select.POLLERR)
    with trio.move_on_after(PROMPT):
        while not poller.poll(0):
            await trio.sleep(0.02)
        return True
    return False


async def test_bytes_both_ways_and_their_counts() -> None:
    async with relayed() as r:
        await r.client.send_all(b"hello upstream")
        assert await receive_exactly(r.server, 14) == b"hello upstream"
        await r.server.send_all(b"hello downstream!")
        assert await receive_exactly(r.client, 17) == b"hello downstream!"
        for i in range(20):  # a conversation, turn by turn
            await r.client.send_all(b"q%d" % i)
            assert await receive_exactly(r.server, len(b"q%d" % i)) == b"q%d" % i
            await r.server.send_all(b"answer %d" % i)
            assert await receive_exactly(r.client, len(b"answer %d" % i)) == b"answer %d" % i
        await r.client.send_eof()
        await r.server.send_eof()
        assert await read_to_end(r.server) == b""
        assert await read_to_end(r.client) == b""
        with trio.fail_after(PROMPT):
            await r.done.wait()
    sent_up = 14 + sum(len(b"q%d" % i) for i in range(20))
    sent_down = 17 + sum(len(b"answer %d" % i) for i in range(20))
    assert (r.carried.received, r.carried.sent) == (sent_up, sent_down)
    assert r.carried.failed is None


async def test_a_client_that_half_closes_after_its_request_gets_the_whole_answer() -> None:
    request = b"R" * 100_000
    answer = bytes(range(256)) * 8192  # 2 MiB, sent only once the request has ended
    async with relayed() as r:
        await r.client.send_all(request)
        await r.client.send_eof()
        assert await read_to_end(r.server) == request  # the half-close arrived, as an end
        async with trio.open_nursery() as nursery:

            async def answer_then_close() -> None:
                await r.server.send_all(answer)
                await r.server.send_eof()

            nursery.start_soon(answer_then_close)
            got = await read_to_end(r.client)
        assert got == answer
        with trio.fail_after(PROMPT):
            await r.done.wait()
    assert (r.carried.received, r.carried.sent, r.carried.failed) == (len(request), len(answer), None)


async def test_a_server_that_speaks_first_and_half_closes_first_still_hears_the_client() -> None:
    async with relayed() as r:
        await r.server.send_all(b"220 ready\r\n")
        assert await receive_exactly(r.client, 11) == b"220 ready\r\n"
        await r.server.send_eof()
        assert await read_to_end(r.client) == b""  # the server's end, passed on
        for _ in range(50):  # the other direction keeps flowing
            await r.client.send_all(b"x" * 1000)
        await r.client.send_eof()
        assert await read_to_end(r.server) == b"x" * 50_000
        with trio.fail_after(PROMPT):
            await r.done.wait()
    assert (r.carried.received, r.carried.sent, r.carried.failed) == (50_000, 11, None)


async def test_a_client_reset_aborts_both_sides_promptly() -> None:
    async with relayed() as r:
        await r.client.send_all(b"start")
        assert await receive_exactly(r.server, 5) == b"start"
        hard_reset(r.client)
        assert await sees_the_end(r.server) == "reset"
        with trio.fail_after(PROMPT):
            await r.done.wait()
    assert r.carried.failed == "downstream"
    assert r.carried.received == 5


async def test_a_server_reset_aborts_both_sides_promptly() -> None:
    async with relayed() as r:
        await r.server.send_all(b"partial answer")
        assert await receive_exactly(r.client, 14) == b"partial answer"
        hard_reset(r.server)
        assert await sees_the_end(r.client) == "reset"
        with trio.fail_after(PROMPT):
            await r.done.wait()
    assert r.carried.failed == "upstream"
    assert r.carried.sent == 14


async def test_a_server_reset_after_the_client_half_closed_reaches_the_client() -> None:
    async with relayed() as r:
        await r.client.send_all(b"request")
        await r.client.send_eof()
        assert await read_to_end(r.server) == b"request"
        hard_reset(r.server)
        assert await sees_the_end(r.client) == "reset"  # not an orderly end: the answer was cut
    assert r.carried.failed == "upstream"


async def test_a_client_reset_after_its_half_close_reaches_a_silent_server() -> None:
    """The client sent its request, half-closed, then reset (it gave up) while the server is still
    working and silent: the server must learn of it promptly, not at its next write."""
    async with relayed() as r:
        await r.client.send_all(b"request")
        await r.client.send_eof()
        assert await read_to_end(r.server) == b"request"
        hard_reset(r.client)
        assert await sees_a_reset(r.server)
        assert r.done.is_set() and r.carried.failed == "downstream"


async def test_a_client_that_closes_outright_while_the_server_talks_ends_both() -> None:
    async with relayed() as r:
        await r.server.send_all(b"x" * 1000)
        await receive_exactly(r.client, 1000)
        r.client.socket.close()  # a FIN, then a RST for whatever arrives after
        assert await read_to_end(r.server) == b""  # the FIN passed on as an end

        async def keep_talking() -> None:
            for _ in range(200):
                await r.server.send_all(b"y" * 10_000)
                await trio.sleep(0.001)

        with trio.move_on_after(PROMPT):
            with suppress(trio.BrokenResourceError):
                await keep_talking()
        with trio.fail_after(PROMPT):
            await r.done.wait()
    assert r.carried.failed == "downstream"


async def test_totals_are_counted_as_bytes_pass() -> None:
    totals: Counter[Any] = Counter()
    async with relayed(totals=totals) as r:
        await r.client.send_all(b"abc")
        await receive_exactly(r.server, 3)
        assert totals == {"received": 3}  # live, before the relay ends
        await r.server.send_all(b"defgh")
        await receive_exactly(r.client, 5)
        assert totals == {"received": 3, "sent": 5}
        await r.client.send_eof()
        await r.server.send_eof()
        await read_to_end(r.client)
        await read_to_end(r.server)
    assert (r.carried.received, r.carried.sent) == (3, 5)


async def test_a_server_that_stops_reading_stops_the_client_a_few_mib_later() -> None:
    """The relay holds one chunk per direction: a stalled reader pushes back on the writer."""
    async with relayed() as r:
        written = 0
        piece = b"z" * 65536
        with trio.move_on_after(1.0):
            while written < 256 * MiB:
                await r.client.send_all(piece)
                written += len(piece)
        assert written < 64 * MiB  # kernel buffers, not the whole stream
        passed = r.carried.received
        await trio.sleep(0.2)
        assert r.carried.received == passed  # the relay stopped reading too
        hard_reset(r.client)
        assert await sees_the_end(r.server) in ("reset", "eof")


# --------------------------------------------------------------------------------------------------
# Through a tunnel: two relays joined by frames over a middle connection
# --------------------------------------------------------------------------------------------------


async def test_through_a_tunnel_both_half_closes_pass_and_the_data_is_intact() -> None:
    upload = bytes(range(256)) * 4096 * 3  # 3 MiB
    download = hashlib.sha256(b"seed").digest() * 50_000  # 1.6 MB
    async with relayed(tunnel=True) as r:

        async def client_side() -> bytes:
            await r.client.send_all(upload)
            await r.client.send_eof()
            return await read_to_end(r.client)

        async def server_side() -> bytes:
            got = await read_to_end(r.server)  # the server answers only after the client's end
            await r.server.send_all(download)
            await r.server.send_eof()
            return got

        results: dict[str, bytes] = {}

        async def run(name: str, fn: Any) -> None:
            results[name] = await fn()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "client", client_side)
            nursery.start_soon(run, "server", server_side)
        with trio.fail_after(PROMPT):
            await r.done.wait()
    assert results["server"] == upload and results["client"] == download
    assert (r.carried.received, r.carried.sent, r.carried.failed) == (len(upload), len(download), None)


async def test_through_a_tunnel_a_server_that_speaks_first_reaches_the_client() -> None:
    async with relayed(tunnel=True) as r:
        await r.server.send_all(b"+OK hello\r\n")
        assert await receive_exactly(r.client, 11) == b"+OK hello\r\n"
        await r.client.send_all(b"QUIT\r\n")
        assert await receive_exactly(r.server, 6) == b"QUIT\r\n"


async def test_through_a_tunnel_a_server_reset_reaches_the_client_as_a_reset() -> None:
    async with relayed(tunnel=True) as r:
        await r.client.send_all(b"go")
        await receive_exactly(r.server, 2)
        hard_reset(r.server)
        assert await sees_the_end(r.client) == "reset"
    assert r.carried.failed == "upstream"  # the tunnel was cut under the first relay


async def test_through_a_tunnel_a_client_reset_reaches_the_server_as_a_reset() -> None:
    async with relayed(tunnel=True) as r:
        await r.client.send_all(b"go")
        await receive_exactly(r.server, 2)
        hard_reset(r.client)
        assert await sees_the_end(r.server) == "reset"
    assert r.carried.failed == "downstream"


async def test_a_half_close_toward_a_tls_server_keeps_its_answer_readable(tmp_path: Path) -> None:
    """A tcp Service with `tls.mode: simple`: the app half-closes after its request, which goes to
    the server as a TCP half-close under the TLS session, and the answer still arrives decrypted
    (`SSLSocket.shutdown` would drop the TLS layer and hand over ciphertext)."""
    init_ca("example.org", tmp_path / "ca")
    cert = issue_workload(tmp_path / "ca", "spiffe://example.org/ns/x/sa/server", tmp_path / "server")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, tmp_path / "server" / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        raw, _ = listener.accept()
        with server_context.wrap_socket(raw, server_side=True) as tls:
            request = tls.recv(4096)
            tls.sendall(b"ANSWER to " + request)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    stream = TlsStream.wrap(await open_tcp(*listener.getsockname()), client_context, server_side=False)
    await stream.do_handshake()
    side = PlainSide(stream)
    try:
        await side.send(b"PING")
        await trio.sleep(0.2)  # the answer is in the socket's buffer by now
        await side.send_eof()
        got = b""
        with trio.fail_after(PROMPT):
            while data := await side.receive():
                got += data
    finally:
        stream.close_now()
        listener.close()
    assert got == b"ANSWER to PING"
