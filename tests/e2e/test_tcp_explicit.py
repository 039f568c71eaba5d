"""Opaque TCP in explicit mode, on loopback: the app dials a tcp Service's `listen` port on sidecar A,
A carries the connection to sidecar B over mutual TLS (the sidecar-tcp/1 tunnel), B hands it to an
app port among its `inbound.tcp_ports`.

- A real `redis-server` behind B and real `redis-cli` in front of A (commands, a pipelined batch),
  with one `protocol: "tcp"` access-log line per connection on each sidecar (bytes, peer identity)
  and `sidecar_tcp_connections_total` / `sidecar_tcp_bytes_total` on both.
- Half-closes both ways, a server that speaks first, 20 MiB each way at once (hash-checked, two
  real sidecar processes whose memory stays bounded); an endpoint picked per connection (names from
  DNS, a refusing one passed over), HTTP's request and idle timeouts not applying, no spans, and a
  tcp Service without mesh TLS reaching its endpoint as it is.
- Failure paths: endpoint down (reset at once, `upstream_connect_failure`, ejected after
  `consecutive_gateway_errors`), a handshake that outlasts `timeouts.connect`, wrong peer identity,
  a caller B does not allow (`unauthorized`, the app never sees it), a port not in `tcp_ports`
  (`no_route`), `circuit_breaker` full (`overflow`), also for connections opened at the same moment,
  the app resetting mid-stream (`upstream_reset`), the client resetting after its
  half-close; /clusters counts nothing left over.
- Drain (a real process on SIGTERM: open connections carry on until they close, or until
  `drain_timeout`; the receiving sidecar draining keeps its tunnels) and live reload (a `listen` port
  added serves within seconds, one removed or moved stops taking connections, one already taken
  refuses the reload (and exits 1 at start); B's `tcp_ports` apply to new tunnels; open connections
  stay up throughout).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import Mesh, Process, SidecarHandle, free_port, mesh_service, spiffe_id, wait_ready, write_config
from .otlp import OtlpReceiver
from .test_access_log import access_lines, metrics
from .test_reload import admin_json, edit

PROMPT = 5.0  # seconds: what "promptly" may take on a loaded machine (a hang is forever)
MiB = 1024 * 1024

# --------------------------------------------------------------------------------------------------
# Helpers: TCP origins, clients, access lines, the two sidecars
# --------------------------------------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


class TcpOrigin:
    """A raw TCP app on a free port: `handler` serves each connection; connections are counted."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> int:
        self.port = free_port()

        async def serve(stream: trio.SocketStream) -> None:
            self.accepted += 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.handler(stream)

        await nursery.start(partial(trio.serve_tcp, serve, self.port, host="127.0.0.1"))
        return self.port


async def read_to_end(stream: trio.abc.ReceiveStream, timeout: float = 20) -> bytes:
    chunks = []
    with trio.fail_after(timeout):
        while data := await stream.receive_some(65536):
            chunks.append(data)
    return b"".join(chunks)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = b""
    with trio.fail_after(PROMPT):
        while len(got) < size:
            data = await stream.receive_some(size - len(got))
            assert data, f"ended after {len(got)} of {size} bytes: {got[:100]!r}"
            got += data
    return got


async def sees_the_end(stream: trio.abc.ReceiveStream) -> str:
    """How the client learns its connection is over, within PROMPT: "eof" or "reset" (bytes still
    in flight are read past). Fails on a hang."""
    with trio.fail_after(PROMPT):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return "reset"
            if not data:
                return "eof"


async def send_then_see_the_end(stream: trio.SocketStream, data: bytes) -> str:
    """Send `data` on a connection the sidecar is about to refuse, and see how it ends (the refusal
    may already have come: the send meets the reset)."""
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError:
        return "reset"
    return await sees_the_end(stream)


def hard_reset(stream: trio.SocketStream) -> None:
    """Close with SO_LINGER 0: the peer gets a RST."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def echo(stream: trio.SocketStream) -> None:
    """Echo every chunk, end when the client ends."""
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        await stream.send_eof()


async def answer_after_eof(stream: trio.SocketStream) -> None:
    """Read the whole request (to the client's half-close), then answer: its SHA-256, then 1 MiB."""
    async with stream:
        request = await read_to_end(stream)
        await stream.send_all(hashlib.sha256(request).digest() + ANSWER)
        await stream.send_eof()


ANSWER = bytes(range(256)) * 4096  # 1 MiB


async def speaks_first(stream: trio.SocketStream) -> None:
    """A server-speaks-first protocol: a greeting before the client says anything, then echo."""
    async with stream:
        await stream.send_all(b"220 origin ready\r\n")
        await echo(stream)


async def resets_mid_stream(stream: trio.SocketStream) -> None:
    """Sends part of an answer, then resets the connection."""
    await stream.receive_some(65536)
    await stream.send_all(b"partial" * 100)
    await trio.sleep(0.05)
    hard_reset(stream)


class AccessLog:
    """The access-log lines printed so far by the in-process sidecars (captured stdout)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.seen: list[dict[str, Any]] = []

    def tcp(self, direction: str | None = None) -> list[dict[str, Any]]:
        self.seen += access_lines(self.capsys)
        return [
            line
            for line in self.seen
            if line["protocol"] == "tcp" and (direction is None or line["direction"] == direction)
        ]

    async def wait_for(self, direction: str, count: int, timeout: float = PROMPT) -> list[dict[str, Any]]:
        """The first `count` tcp lines of `direction`, once they are there."""
        with trio.fail_after(timeout):
            while len(lines := self.tcp(direction)) < count:
                await trio.sleep(0.02)
        return lines


def tcp_service(name: str, b: SidecarHandle, listen: int, **fields: Any) -> dict[str, Any]:
    """A tcp Service on A: its `listen` port, the peer sidecar B's inbound listener over mutual TLS."""
    return mesh_service(name, b, protocol="tcp", listen=f"127.0.0.1:{listen}", **fields)


async def peer(mesh: Mesh, tcp_ports: list[int], **inbound: Any) -> SidecarHandle:
    """Sidecar B, service "backend", whose app ports `tcp_ports` peers may reach as TCP."""
    return await mesh.sidecar(service="backend", inbound_app=tcp_ports[0], inbound={"tcp_ports": tcp_ports, **inbound})


async def connect(port: int) -> trio.SocketStream:
    with trio.fail_after(PROMPT):
        return await trio.open_tcp_stream("127.0.0.1", port)


async def service_state(sc: SidecarHandle, name: str) -> dict[str, Any]:
    """The service's entry in the sidecar's /clusters."""
    (found,) = [s for s in (await admin_json(sc, "/clusters"))["services"] if s["name"] == name]
    return dict(found)


def sample(values: dict[Any, float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


# --------------------------------------------------------------------------------------------------
# Redis behind B, redis-cli in front of A
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError("redis-server exited") from None
                time.sleep(0.025)
        else:
            raise AssertionError("redis-server did not listen")
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


async def redis_cli(port: int, *args: str, stdin: bytes | None = None) -> str:
    with trio.fail_after(10):
        done = await trio.run_process(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
        )
    return done.stdout.decode()


def resp(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


async def test_redis_cli_through_two_sidecars_with_access_lines_and_metrics(
    mesh: Mesh, redis_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    b = await peer(mesh, [redis_port])
    listen = free_port()
    a = await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen)])
    log = AccessLog(capsys)

    assert (await redis_cli(listen, "SET", "greeting", "hello world")).strip() == "OK"
    assert (await redis_cli(listen, "GET", "greeting")).strip() == "hello world"
    assert (await redis_cli(listen, "PING")).strip() == "PONG"
    batch = b"".join(resp(b"SET", b"key:%d" % i, b"value-%d" % i) for i in range(2000))
    piped = await redis_cli(listen, "--pipe", stdin=batch)
    assert "errors: 0, replies: 2000" in piped, piped
    assert (await redis_cli(listen, "GET", "key:1999")).strip() == "value-1999"

    # A pipelined batch from a client whose bytes we know exactly: 500 INCRs in one write, then the
    # client's half-close; Redis answers all, then closes on the end.
    request = resp(b"INCR", b"counter") * 500
    replies = b"".join(b":%d\r\n" % i for i in range(1, 501))
    stream = await connect(listen)
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()
        assert await read_to_end(stream) == replies

    outbound = await log.wait_for("outbound", 6)
    inbound = await log.wait_for("inbound", 6)
    assert len(outbound) == len(inbound) == 6  # one line per connection, on each sidecar
    for line in outbound + inbound:
        assert line["method"] is None and line["path"] is None and line["status"] is None
        assert line["reason"] is None and line["duration_ms"] >= 0 and line["trace_id"] is None
    for line in outbound:
        assert line["service"] == "cache" and line["upstream"] == f"127.0.0.1:{b.inbound}"
        assert line["peer_identity"] is None  # the app's own plaintext connection
    for line in inbound:
        assert line["service"] == "backend" and line["upstream"] == f"127.0.0.1:{redis_port}"
        assert line["peer_identity"] == spiffe_id("frontend")
    # Each connection carried the same bytes on both sidecars; the last one exactly what we sent.
    pairs = sorted((line["bytes_in"], line["bytes_out"]) for line in outbound)
    assert pairs == sorted((line["bytes_in"], line["bytes_out"]) for line in inbound)
    assert all(i > 0 and o > 0 for i, o in pairs)
    assert (len(request), len(replies)) in pairs
    assert max(pairs) >= (len(batch), 2000 * 5)  # the --pipe batch, "+OK\r\n" each

    received = sum(line["bytes_in"] for line in outbound)
    sent = sum(line["bytes_out"] for line in outbound)
    a_values, b_values = await metrics(a.admin_url), await metrics(b.admin_url)
    assert sample(a_values, "sidecar_tcp_connections_total", direction="outbound", service="cache") == 6
    assert sample(b_values, "sidecar_tcp_connections_total", direction="inbound", service="backend") == 6
    for values, direction, service_name in ((a_values, "outbound", "cache"), (b_values, "inbound", "backend")):
        labels = {"direction": direction, "service": service_name}
        assert sample(values, "sidecar_tcp_bytes_total", flow="received", **labels) == received
        assert sample(values, "sidecar_tcp_bytes_total", flow="sent", **labels) == sent
    # No HTTP request was counted for any of it.
    assert not any(name == "sidecar_requests_total" and v for (name, _), v in a_values.items())


# --------------------------------------------------------------------------------------------------
# Half-closes, server-speaks-first, a large transfer
# --------------------------------------------------------------------------------------------------


async def test_half_closes_pass_both_ways_and_a_server_that_speaks_first_reaches_the_client(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    after_eof = await TcpOrigin(answer_after_eof).start(nursery)
    first = await TcpOrigin(speaks_first).start(nursery)
    b = await peer(mesh, [after_eof, first])  # two app ports: each Service names its own
    eof_listen, first_listen = free_port(), free_port()
    await mesh.sidecar(
        service="frontend",
        services=[
            tcp_service("eof", b, eof_listen, ports=[after_eof]),
            tcp_service("greeter", b, first_listen, ports=[first]),
        ],
    )
    log = AccessLog(capsys)

    # The client sends, half-closes, and still gets the whole answer (sent only after the origin read
    # the end), then the origin's own end.
    request = os.urandom(300_000)
    stream = await connect(eof_listen)
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()
        answer = await read_to_end(stream)
    assert answer == hashlib.sha256(request).digest() + ANSWER

    # The origin speaks first; the client says nothing until it has the greeting.
    stream = await connect(first_listen)
    async with stream:
        assert await receive_exactly(stream, 18) == b"220 origin ready\r\n"
        await stream.send_all(b"HELO client\r\n")
        assert await receive_exactly(stream, 13) == b"HELO client\r\n"
        await stream.send_eof()
        assert await read_to_end(stream) == b""  # the origin ended after our end
    outbound = await log.wait_for("outbound", 2)
    assert {(line["service"], line["bytes_in"], line["bytes_out"], line["reason"]) for line in outbound} == {
        ("eof", len(request), len(answer), None),
        ("greeter", 13, 18 + 13, None),
    }
    inbound = await log.wait_for("inbound", 2)
    assert {line["upstream"] for line in inbound} == {f"127.0.0.1:{after_eof}", f"127.0.0.1:{first}"}


async def test_the_origin_half_closes_first_and_the_client_keeps_sending(mesh: Mesh, nursery: trio.Nursery) -> None:
    received: list[bytes] = []

    async def says_bye_then_listens(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"bye")
            await stream.send_eof()
            received.append(await read_to_end(stream))

    app = await TcpOrigin(says_bye_then_listens).start(nursery)
    b = await peer(mesh, [app])
    listen = free_port()
    await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen)])
    stream = await connect(listen)
    async with stream:
        assert await read_to_end(stream) == b"bye"  # the origin's end came through
        for _ in range(100):
            await stream.send_all(b"x" * 1000)  # and our direction still flows
        await stream.send_eof()
    with trio.fail_after(PROMPT):
        while not received:
            await trio.sleep(0.02)
    assert received == [b"x" * 100_000]


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def sidecar_process_docs(
    pki: Any, service: str, ports: dict[str, int], *, extra: list[dict[str, Any]] | None = None, **fields: Any
) -> list[dict[str, Any]]:
    doc: dict[str, Any] = {
        "kind": "Sidecar",
        "service": service,
        "tls": pki.tls_section(service),
        "outbound": {"listen": f"127.0.0.1:{ports['outbound']}"},
        "admin": {"listen": f"127.0.0.1:{ports['admin']}"},
        **fields,
    }
    return [doc, *(extra or [])]


async def test_20_mib_each_way_at_once_arrives_intact_in_bounded_memory(
    mesh: Mesh, nursery: trio.Nursery, tmp_path: Path, processes: list[Process]
) -> None:
    size = 20 * MiB
    up = os.urandom(MiB) * 20
    down = hashlib.sha512(b"down").digest() * (size // 64)
    seen: dict[str, str] = {}

    async def bulk(stream: trio.SocketStream) -> None:
        async with stream:

            async def take() -> None:
                digest = hashlib.sha256()
                while data := await stream.receive_some(65536):
                    digest.update(data)
                seen["up"] = digest.hexdigest()

            async with trio.open_nursery() as both:
                both.start_soon(take)
                view = memoryview(down)
                for offset in range(0, size, 65536):
                    await stream.send_all(view[offset : offset + 65536])
                await stream.send_eof()

    app = await TcpOrigin(bulk).start(nursery)
    b_ports = {name: free_port() for name in ("inbound", "outbound", "admin")}
    a_ports = {name: free_port() for name in ("outbound", "admin", "listen")}
    write_config(
        tmp_path / "b",
        sidecar_process_docs(
            mesh.pki,
            "backend",
            b_ports,
            inbound={"listen": f"127.0.0.1:{b_ports['inbound']}", "app": f"127.0.0.1:{app}", "tcp_ports": [app]},
        ),
    )
    bulk_service = {
        "kind": "Service",
        "name": "bulk",
        "protocol": "tcp",
        "listen": f"127.0.0.1:{a_ports['listen']}",
        "endpoints": [{"address": f"127.0.0.1:{b_ports['inbound']}"}],
        "tls": {"identity": spiffe_id("backend")},
    }
    write_config(tmp_path / "a", sidecar_process_docs(mesh.pki, "frontend", a_ports, extra=[bulk_service]))
    b_proc, a_proc = Process(tmp_path / "b", tmp_path / "b.log"), Process(tmp_path / "a", tmp_path / "a.log")
    processes += [a_proc, b_proc]
    await wait_ready(b_ports["admin"])
    await wait_ready(a_ports["admin"])

    before = {p: rss_peak_kib(p.proc.pid) for p in (a_proc, b_proc)}

    got = hashlib.sha256()
    stream = await connect(a_ports["listen"])
    async with stream:

        async def send_up() -> None:
            view = memoryview(up)
            for offset in range(0, size, 65536):
                await stream.send_all(view[offset : offset + 65536])
            await stream.send_eof()

        async with trio.open_nursery() as both:
            both.start_soon(send_up)
            total = 0
            with trio.fail_after(30):
                while data := await stream.receive_some(65536):
                    got.update(data)
                    total += len(data)
    assert total == size and got.hexdigest() == hashlib.sha256(down).hexdigest()
    with trio.fail_after(PROMPT):
        while "up" not in seen or len(seen) < 1:
            await trio.sleep(0.02)
    assert seen["up"] == hashlib.sha256(up).hexdigest()
    for proc in (a_proc, b_proc):
        grown = rss_peak_kib(proc.proc.pid) - before[proc]
        assert grown < 8 * 1024, f"peak RSS grew {grown} KiB carrying 20 MiB each way: {proc.log_path}"


def named(name: bytes) -> Handler:
    """An origin that says its name first, then echoes."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(name + b"\n")
            await echo(stream)

    return handler


async def test_each_connection_picks_an_endpoint_from_dns_and_a_refusing_one_is_passed_over(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    b1 = await peer(mesh, [await TcpOrigin(named(b"one")).start(nursery)])
    b2 = await peer(mesh, [await TcpOrigin(named(b"two")).start(nursery)])
    down = free_port()
    listen = free_port()
    cache = {
        "name": "cache",
        "protocol": "tcp",
        "listen": f"127.0.0.1:{listen}",
        # names resolved by DNS (/etc/hosts), as for HTTP; the last endpoint refuses connections
        "endpoints": [{"address": f"localhost:{p}"} for p in (b1.inbound, b2.inbound, down)],
        "load_balancer": "round_robin",
        "tls": {"identity": spiffe_id("backend")},
    }
    a = await mesh.sidecar(service="frontend", services=[cache])
    log = AccessLog(capsys)
    seen = []
    for _ in range(6):
        stream = await connect(listen)
        async with stream:
            seen.append(await receive_exactly(stream, 4))
            await stream.send_all(b"x")
            assert await receive_exactly(stream, 1) == b"x"
    assert sorted(set(seen)) == [b"one\n", b"two\n"]
    assert min(seen.count(b"one\n"), seen.count(b"two\n")) >= 2  # per connection, not per client
    lines = await log.wait_for("outbound", 6)
    assert all(line["reason"] is None for line in lines)  # the refused connect was retried elsewhere
    assert {line["upstream"] for line in lines} == {f"127.0.0.1:{b1.inbound}", f"127.0.0.1:{b2.inbound}"}
    clusters = await admin_json(a, "/clusters")
    (service,) = [s for s in clusters["services"] if s["name"] == "cache"]
    assert sorted(e["address"] for e in service["endpoints"]) == sorted(
        f"127.0.0.1:{p}" for p in (b1.inbound, b2.inbound, down)
    )


async def test_http_timeouts_do_not_cut_a_quiet_tcp_connection(mesh: Mesh, nursery: trio.Nursery) -> None:
    """`timeouts.request` and `timeouts.idle` are HTTP's: a TCP connection outlives both."""
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    listen = free_port()
    timeouts = {"request": "200ms", "idle": "200ms", "per_try": "100ms"}
    await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen, timeouts=timeouts)])
    stream = await connect(listen)
    async with stream:
        await stream.send_all(b"a")
        assert await receive_exactly(stream, 1) == b"a"
        await trio.sleep(0.7)
        await stream.send_all(b"b")
        assert await receive_exactly(stream, 1) == b"b"


# --------------------------------------------------------------------------------------------------
# Failure paths
# --------------------------------------------------------------------------------------------------


async def test_a_connect_that_outlasts_timeouts_connect_is_a_connect_failure(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    """An endpoint that takes the TCP connection and never answers the TLS handshake: the connect
    timeout bounds TCP and TLS together."""
    mute = TcpOrigin(lambda stream: trio.sleep_forever())
    port = await mute.start(nursery)
    listen = free_port()
    await mesh.sidecar(
        service="frontend",
        services=[
            {
                "name": "cache",
                "protocol": "tcp",
                "listen": f"127.0.0.1:{listen}",
                "endpoints": [{"address": f"127.0.0.1:{port}"}],
                "tls": {"identity": spiffe_id("backend")},
                "timeouts": {"connect": "300ms"},
                "retries": {"attempts": 0},
            }
        ],
    )
    log = AccessLog(capsys)
    stream = await connect(listen)
    started = trio.current_time()
    async with stream:
        assert await send_then_see_the_end(stream, b"anyone?") == "reset"
    took = trio.current_time() - started
    assert 0.25 <= took < 2.5
    (line,) = await log.wait_for("outbound", 1)
    assert line["reason"] == "upstream_connect_failure" and line["duration_ms"] >= 250
    assert mute.accepted == 1


async def test_an_endpoint_refusing_connections_resets_the_client_and_is_ejected(
    mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    down = free_port()  # nothing listens there
    listen = free_port()
    outlier = {"consecutive_gateway_errors": 2, "max_ejection_percent": 100, "base_ejection": "30s"}
    a = await mesh.sidecar(
        service="frontend",
        services=[
            {
                "name": "cache",
                "protocol": "tcp",
                "listen": f"127.0.0.1:{listen}",
                "endpoints": [{"address": f"127.0.0.1:{down}"}],
                "tls": {"identity": spiffe_id("backend")},
                "retries": {"attempts": 0},
                "outlier_detection": outlier,
            }
        ],
    )
    log = AccessLog(capsys)
    for count in (1, 2):
        stream = await connect(listen)
        async with stream:
            assert await send_then_see_the_end(stream, b"hello?") == "reset"
        line = (await log.wait_for("outbound", count))[-1]
        assert line["reason"] == "upstream_connect_failure"
        assert line["service"] == "cache" and line["bytes_in"] == 0 and line["bytes_out"] == 0
        clusters = await admin_json(a, "/clusters")
        (cache,) = [s for s in clusters["services"] if s["name"] == "cache"]
        assert cache["endpoints"][0]["ejected"] is (count == 2)
        assert cache["open_connections"] == 0
    stream = await connect(listen)  # ejected: not even tried
    async with stream:
        assert await sees_the_end(stream) in ("reset", "eof")
    assert (await log.wait_for("outbound", 3))[-1]["reason"] == "no_healthy_upstream"


async def test_health_checks_of_a_tcp_service_connect_and_take_a_dead_endpoint_out(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """A tcp service's health check is a connection made to the endpoint (TCP, TLS, identity): one
    whose connects fail turns unhealthy and takes no connection; the live one carries them all."""
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    down = free_port()  # nothing listens there
    listen = free_port()
    check = {"interval": "100ms", "timeout": "500ms", "unhealthy_threshold": 1, "healthy_threshold": 1}
    service = tcp_service("cache", b, listen, health_check=check, load_balancer="round_robin")
    service["endpoints"].append({"address": f"127.0.0.1:{down}"})
    a = await mesh.sidecar(service="frontend", services=[service])
    with trio.fail_after(PROMPT):
        while True:
            health = {e["address"]: e["healthy"] for e in (await service_state(a, "cache"))["endpoints"]}
            if health[f"127.0.0.1:{down}"] is False:
                break
            await trio.sleep(0.05)
    assert health[f"127.0.0.1:{b.inbound}"] is True
    for _ in range(4):  # round robin would alternate: only the healthy endpoint is left to pick
        stream = await connect(listen)
        async with stream:
            await stream.send_all(b"ping")
            assert await receive_exactly(stream, 4) == b"ping"
    with trio.fail_after(PROMPT):  # the last one is released once the sidecar has seen its end
        while (await service_state(a, "cache"))["open_connections"]:
            await trio.sleep(0.05)


async def test_a_peer_with_the_wrong_identity_is_refused(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = TcpOrigin(echo)
    b = await peer(mesh, [await origin.start(nursery)])
    listen = free_port()
    await mesh.sidecar(
        service="frontend",
        services=[tcp_service("cache", b, listen, tls={"identity": spiffe_id("someone-else")})],
    )
    log = AccessLog(capsys)
    stream = await connect(listen)
    async with stream:
        assert await send_then_see_the_end(stream, b"secret") == "reset"
    (line,) = await log.wait_for("outbound", 1)
    assert line["reason"] == "upstream_connect_failure" and line["bytes_in"] == 0
    await trio.sleep(0.2)
    assert origin.accepted == 0  # nothing reached the app


async def test_a_caller_b_does_not_allow_is_refused_before_the_app_sees_a_connection(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = TcpOrigin(echo)
    app = await origin.start(nursery)
    b = await peer(mesh, [app], allow=[spiffe_id("only-this-one")])
    listen = free_port()
    a = await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen)])
    log = AccessLog(capsys)
    stream = await connect(listen)
    async with stream:
        assert await send_then_see_the_end(stream, b"let me in") == "reset"
    (refused,) = await log.wait_for("inbound", 1)
    assert refused["reason"] == "unauthorized" and refused["peer_identity"] == spiffe_id("frontend")
    assert refused["bytes_in"] == 0 and refused["upstream"] is None
    (outbound,) = await log.wait_for("outbound", 1)
    assert outbound["reason"] is not None  # A saw its tunnel cut
    await trio.sleep(0.2)
    assert origin.accepted == 0
    cache = await service_state(a, "cache")
    assert cache["open_connections"] == 0 and cache["endpoints"][0]["active_requests"] == 0


async def test_a_port_not_in_tcp_ports_is_refused_with_no_route(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = TcpOrigin(echo)
    open_port = await origin.start(nursery)
    other = TcpOrigin(echo)
    closed_port = await other.start(nursery)  # listening, but not among B's tcp_ports
    b = await peer(mesh, [open_port])
    listen = free_port()
    await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen, ports=[closed_port])])
    log = AccessLog(capsys)
    stream = await connect(listen)
    async with stream:
        assert await send_then_see_the_end(stream, b"knock") == "reset"
    (refused,) = await log.wait_for("inbound", 1)
    assert refused["reason"] == "no_route" and refused["upstream"] is None
    await trio.sleep(0.2)
    assert origin.accepted == other.accepted == 0


async def test_without_ports_a_peer_with_several_tcp_ports_refuses_with_no_route(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = TcpOrigin(echo), TcpOrigin(echo)
    b = await peer(mesh, [await first.start(nursery), await second.start(nursery)])
    listen = free_port()
    await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen)])  # no `ports`
    log = AccessLog(capsys)
    stream = await connect(listen)
    async with stream:
        assert await send_then_see_the_end(stream, b"which one?") == "reset"
    (refused,) = await log.wait_for("inbound", 1)
    assert refused["reason"] == "no_route"
    assert first.accepted == second.accepted == 0


@pytest.mark.parametrize("threshold", ["max_connections", "max_requests"])
async def test_a_full_circuit_breaker_refuses_the_next_connection_with_overflow(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str], threshold: str
) -> None:
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    listen = free_port()
    a = await mesh.sidecar(
        service="frontend", services=[tcp_service("cache", b, listen, circuit_breaker={threshold: 1})]
    )
    log = AccessLog(capsys)
    held = await connect(listen)
    await held.send_all(b"one")
    assert await receive_exactly(held, 3) == b"one"  # open, and carried
    cache = await service_state(a, "cache")
    assert cache["open_connections"] == 1 and cache["endpoints"][0]["active_requests"] == 1
    second = await connect(listen)
    async with second:
        assert await send_then_see_the_end(second, b"two") == "reset"
    (refused,) = await log.wait_for("outbound", 1)
    assert refused["reason"] == "overflow" and refused["upstream"] is None
    await held.send_all(b"still here")
    assert await receive_exactly(held, 10) == b"still here"
    await held.send_eof()
    assert await read_to_end(held) == b""
    await held.aclose()
    await log.wait_for("outbound", 2)
    cache = await service_state(a, "cache")
    assert cache["open_connections"] == 0 and cache["endpoints"][0]["active_requests"] == 0
    third = await connect(listen)  # the held one closed: room again
    async with third:
        await third.send_all(b"three")
        assert await receive_exactly(third, 5) == b"three"


@pytest.mark.parametrize("threshold", ["max_connections", "max_requests"])
async def test_the_breaker_holds_for_connections_opened_at_the_same_moment(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str], threshold: str
) -> None:
    """Connections still connecting count against the breaker too: of two opened together with a
    threshold of 1, one is carried and the other refused."""
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    listen = free_port()
    await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen, circuit_breaker={threshold: 1})])
    log = AccessLog(capsys)
    # Blocking connects, with no checkpoint between: both wait in the backlog, and the sidecar takes
    # them in a row, before either has reached its upstream.
    pair = [socket.create_connection(("127.0.0.1", listen)) for _ in range(2)]
    streams = [trio.SocketStream(trio.socket.from_stdlib_socket(sock)) for sock in pair]
    outcomes: list[str] = []

    async def talk(stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(b"ping")
            with trio.move_on_after(PROMPT):
                data = await stream.receive_some(4)
                outcomes.append("carried" if data == b"ping" else "refused")
                return
            outcomes.append("hung")
        except trio.BrokenResourceError:
            outcomes.append("refused")

    async with trio.open_nursery() as both:
        for stream in streams:
            both.start_soon(talk, stream)
    for stream in streams:
        await stream.aclose()
    lines = await log.wait_for("outbound", 2)
    assert sorted(outcomes) == ["carried", "refused"]
    assert sorted(str(line["reason"]) for line in lines) == ["None", "overflow"]


async def test_an_app_reset_mid_stream_resets_the_client_and_is_logged_as_upstream_reset(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    b = await peer(mesh, [await TcpOrigin(resets_mid_stream).start(nursery)])
    listen = free_port()
    a = await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen)])
    log = AccessLog(capsys)
    stream = await connect(listen)
    async with stream:
        # never an orderly end: the answer was cut
        assert await send_then_see_the_end(stream, b"GET something") == "reset"
    (inbound,) = await log.wait_for("inbound", 1)
    (outbound,) = await log.wait_for("outbound", 1)
    assert inbound["reason"] == "upstream_reset"
    assert outbound["reason"] == "upstream_reset"
    assert inbound["bytes_in"] == outbound["bytes_in"] == 13
    cache = await service_state(a, "cache")  # nothing left counted
    assert cache["open_connections"] == 0 and cache["endpoints"][0]["active_requests"] == 0


async def test_a_client_reset_after_its_half_close_ends_the_app_connection(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client sends, half-closes, then gives up (reset) while the app works on its answer, silent:
    both sidecars let go of the connection promptly (the app sees it end, each sidecar logs it)."""
    ended: list[str] = []

    async def silent_worker(stream: trio.SocketStream) -> None:
        await read_to_end(stream)  # the whole request
        # then "work" without writing, watching the socket the way a server's event loop would
        poller = select_poll(stream)
        with trio.move_on_after(PROMPT + 2):
            while not poller.poll(0):
                await trio.sleep(0.02)
            ended.append("gone")
        stream.socket.close()

    b = await peer(mesh, [await TcpOrigin(silent_worker).start(nursery)])
    listen = free_port()
    await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen)])
    log = AccessLog(capsys)
    stream = await connect(listen)
    await stream.send_all(b"long job")
    await stream.send_eof()
    await trio.sleep(0.3)  # the request and its end are through
    hard_reset(stream)
    with trio.fail_after(PROMPT):
        while not ended:
            await trio.sleep(0.02)
    (outbound,) = await log.wait_for("outbound", 1)
    (inbound,) = await log.wait_for("inbound", 1)
    assert outbound["bytes_in"] == inbound["bytes_in"] == 8


def select_poll(stream: trio.SocketStream) -> Any:
    """A poll object that fires when the connection is gone (POLLHUP / POLLERR: a reset, or both
    directions ended), not merely half-closed by the peer."""
    import select

    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLHUP | select.POLLERR)
    return poller


# --------------------------------------------------------------------------------------------------
# Drain (a real sidecar process) and live reload (in process)
# --------------------------------------------------------------------------------------------------


async def start_a_process(
    mesh: Mesh, b: SidecarHandle, tmp_path: Path, processes: list[Process], drain_timeout: str
) -> tuple[Process, int]:
    ports = {name: free_port() for name in ("outbound", "admin", "listen")}
    service = {
        "kind": "Service",
        "name": "cache",
        "protocol": "tcp",
        "listen": f"127.0.0.1:{ports['listen']}",
        "endpoints": [{"address": f"127.0.0.1:{b.inbound}"}],
        "tls": {"identity": spiffe_id("backend")},
    }
    docs = sidecar_process_docs(mesh.pki, "frontend", ports, extra=[service], drain_timeout=drain_timeout)
    write_config(tmp_path / "a", docs)
    proc = Process(tmp_path / "a", tmp_path / "a.log")
    processes.append(proc)
    await wait_ready(ports["admin"])
    return proc, ports["listen"]


async def exits(proc: Process, timeout: float) -> float:
    """Seconds until the process exits (fails past `timeout`)."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while proc.proc.poll() is None:
            await trio.sleep(0.02)
    return trio.current_time() - start


async def test_sigterm_lets_an_open_tcp_connection_carry_on_until_it_closes(
    mesh: Mesh, nursery: trio.Nursery, tmp_path: Path, processes: list[Process]
) -> None:
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    proc, listen = await start_a_process(mesh, b, tmp_path, processes, drain_timeout="20s")
    stream = await connect(listen)
    await stream.send_all(b"before")
    assert await receive_exactly(stream, 6) == b"before"
    proc.proc.send_signal(signal.SIGTERM)
    for i in range(5):  # draining, the connection keeps working
        await trio.sleep(0.1)
        await stream.send_all(b"during %d" % i)
        assert await receive_exactly(stream, 8) == b"during %d" % i
    assert proc.proc.poll() is None
    await stream.send_eof()
    assert await read_to_end(stream) == b""
    await stream.aclose()
    assert await exits(proc, 5) < 3  # at its close, not at drain_timeout
    assert proc.proc.returncode == 0, proc.output()
    lines = [json.loads(x) for x in proc.output().splitlines() if x.startswith("{") and '"protocol"' in x]
    (line,) = [x for x in lines if x.get("protocol") == "tcp"]
    assert line["bytes_in"] == line["bytes_out"] == 6 + 5 * 8 and line["reason"] is None


async def test_drain_timeout_bounds_how_long_an_open_tcp_connection_holds_the_exit(
    mesh: Mesh, nursery: trio.Nursery, tmp_path: Path, processes: list[Process]
) -> None:
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    proc, listen = await start_a_process(mesh, b, tmp_path, processes, drain_timeout="1s")
    stream = await connect(listen)
    async with stream:
        await stream.send_all(b"idle now")
        assert await receive_exactly(stream, 8) == b"idle now"
        proc.proc.send_signal(signal.SIGTERM)
        took = await exits(proc, 6)
        assert 0.9 <= took < 4
        assert proc.proc.returncode == 0, proc.output()
        assert await sees_the_end(stream) in ("reset", "eof")


async def test_the_receiving_sidecar_draining_keeps_its_open_tunnels_and_takes_no_new_ones(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    listen = free_port()
    await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen, retries={"attempts": 0})])
    log = AccessLog(capsys)
    held = await connect(listen)
    await held.send_all(b"before")
    assert await receive_exactly(held, 6) == b"before"
    b.runtime.start_drain("test")
    await trio.sleep(0.2)
    await held.send_all(b"during")
    assert await receive_exactly(held, 6) == b"during"
    fresh = await connect(listen)
    async with fresh:
        assert await send_then_see_the_end(fresh, b"new") == "reset"  # B's inbound listener is closed
    (refused,) = await log.wait_for("outbound", 1)
    assert refused["reason"] == "upstream_connect_failure"
    await held.send_eof()
    assert await read_to_end(held) == b""
    await held.aclose()
    inbound = await log.wait_for("inbound", 1)
    assert inbound[0]["bytes_in"] == 12 and inbound[0]["reason"] is None


async def test_a_reload_adds_and_removes_listen_ports_while_open_connections_stay_up(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    first, second = free_port(), free_port()
    a = await mesh.sidecar(service="frontend", services=[tcp_service("first", b, first)])
    held = await connect(first)
    await held.send_all(b"hold")
    assert await receive_exactly(held, 4) == b"hold"

    added = {"kind": "Service", **tcp_service("second", b, second)}
    edit(a, lambda docs: docs.append(added))
    started = trio.current_time()
    with trio.fail_after(4):
        while True:
            try:
                fresh = await trio.open_tcp_stream("127.0.0.1", second)
                break
            except OSError:
                await trio.sleep(0.05)
    assert trio.current_time() - started < 2.5
    async with fresh:
        await fresh.send_all(b"new port")
        assert await receive_exactly(fresh, 8) == b"new port"
    await held.send_all(b"still")
    assert await receive_exactly(held, 5) == b"still"

    edit(a, lambda docs: docs.remove(next(d for d in docs if d.get("name") == "first")))
    with trio.fail_after(4):
        while "first" in a.runtime.tcp_listeners or "first" in a.runtime.registry.clusters:
            await trio.sleep(0.05)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", first)  # closed for new connections
    await held.send_all(b"and still")
    assert await receive_exactly(held, 9) == b"and still"  # the open one carries on
    await held.send_eof()
    assert await read_to_end(held) == b""
    await held.aclose()
    async with await connect(second) as again:
        await again.send_all(b"ok")
        assert await receive_exactly(again, 2) == b"ok"

    third = free_port()  # the second service moves to another port

    def move(docs: list[dict[str, Any]]) -> None:
        next(d for d in docs if d.get("name") == "second")["listen"] = f"127.0.0.1:{third}"

    edit(a, move)
    with trio.fail_after(4):
        while True:
            try:
                moved = await trio.open_tcp_stream("127.0.0.1", third)
                break
            except OSError:
                await trio.sleep(0.05)
    async with moved:
        await moved.send_all(b"moved")
        assert await receive_exactly(moved, 5) == b"moved"
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", second)
    assert await reload_count(a, "failure") == 0
    async with httpx.AsyncClient(base_url=a.admin_url) as admin:
        assert (await admin.get("/ready")).status_code == 200


async def reload_count(sc: SidecarHandle, result: str) -> float:
    return sample(await metrics(sc.admin_url), "sidecar_config_reloads_total", result=result)


async def test_a_reload_whose_listen_port_is_taken_is_refused_and_the_running_config_stays(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b = await peer(mesh, [await TcpOrigin(echo).start(nursery)])
    first = free_port()
    a = await mesh.sidecar(service="frontend", services=[tcp_service("first", b, first)])
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        added = {"kind": "Service", **tcp_service("second", b, taken)}
        edit(a, lambda docs: docs.append(added))
        with trio.fail_after(4):
            while (await admin_json(a, "/config"))["last_error"] is None:
                await trio.sleep(0.05)
        assert str(taken) in (await admin_json(a, "/config"))["last_error"]["message"]
        assert "second" not in a.runtime.registry.clusters
    async with await connect(first) as stream:  # the running config still serves
        await stream.send_all(b"fine")
        assert await receive_exactly(stream, 4) == b"fine"


async def test_a_reload_of_the_receiver_keeps_open_tunnels_and_applies_tcp_ports_to_new_ones(
    mesh: Mesh, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await TcpOrigin(echo).start(nursery)
    other = await TcpOrigin(echo).start(nursery)
    b = await peer(mesh, [app, other])
    listen = free_port()
    await mesh.sidecar(service="frontend", services=[tcp_service("cache", b, listen, ports=[app])])
    log = AccessLog(capsys)
    held = await connect(listen)
    await held.send_all(b"open")
    assert await receive_exactly(held, 4) == b"open"

    def close_app_port(docs: list[dict[str, Any]]) -> None:
        docs[0]["inbound"]["tcp_ports"] = [other]

    edit(b, close_app_port)
    with trio.fail_after(4):
        while b.runtime.snapshot.sidecar.inbound.tcp_ports != (other,):  # type: ignore[union-attr]
            await trio.sleep(0.05)
    fresh = await connect(listen)
    async with fresh:
        assert await send_then_see_the_end(fresh, b"new") == "reset"
    (refused,) = await log.wait_for("inbound", 1)
    assert refused["reason"] == "no_route"
    await held.send_all(b"still open")
    assert await receive_exactly(held, 10) == b"still open"
    await held.send_eof()
    assert await read_to_end(held) == b""
    await held.aclose()


async def test_a_listen_port_already_taken_at_start_exits_1_with_a_message(
    mesh: Mesh, tmp_path: Path, processes: list[Process]
) -> None:
    ports = {name: free_port() for name in ("outbound", "admin")}
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        service = {
            "kind": "Service",
            "name": "cache",
            "protocol": "tcp",
            "listen": f"127.0.0.1:{taken}",
            "endpoints": [{"address": "127.0.0.1:1"}],
        }
        write_config(tmp_path / "a", sidecar_process_docs(mesh.pki, "frontend", ports, extra=[service]))
        proc = Process(tmp_path / "a", tmp_path / "a.log")
        processes.append(proc)
        await exits(proc, 15)
    assert proc.proc.returncode == 1, proc.output()
    assert "cache" in proc.output() and str(taken) in proc.output()


async def test_a_tcp_service_without_mesh_tls_reaches_its_endpoint_as_it_is(
    mesh: Mesh, redis_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tls.mode: disabled`: no tunnel, the app's bytes go to the endpoint as they are (an outside
    database, say); half-closes pass too."""
    listen = free_port()
    a = await mesh.sidecar(
        service="frontend",
        services=[
            {
                "name": "db",
                "protocol": "tcp",
                "listen": f"127.0.0.1:{listen}",
                "endpoints": [{"address": f"127.0.0.1:{redis_port}"}],
                "tls": {"mode": "disabled"},
            }
        ],
    )
    log = AccessLog(capsys)
    request = resp(b"PING") + resp(b"ECHO", b"plain")
    stream = await connect(listen)
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()
        assert await read_to_end(stream) == b"+PONG\r\n$5\r\nplain\r\n"
    (line,) = await log.wait_for("outbound", 1)
    assert line["upstream"] == f"127.0.0.1:{redis_port}" and line["reason"] is None
    assert (line["bytes_in"], line["bytes_out"]) == (len(request), 18)
    (db,) = [s for s in (await admin_json(a, "/clusters"))["services"] if s["name"] == "db"]
    assert db["open_connections"] == 0 and db["endpoints"][0]["active_requests"] == 0


async def test_a_tcp_connection_makes_no_spans(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tracing on both sidecars, a TCP connection leaves no span (there is no request to hang one
    on); an HTTP request afterwards shows the collector does receive what there is."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    receiver = OtlpReceiver()
    tracing = {"exporter": "otlp", "endpoint": f"http://127.0.0.1:{await mesh.origin(receiver)}", "sample_ratio": 1.0}
    app = await TcpOrigin(echo).start(nursery)
    b = await mesh.sidecar(
        service="backend", inbound_app=await mesh.origin(), inbound={"tcp_ports": [app]}, tracing=tracing
    )
    listen = free_port()
    a = await mesh.sidecar(
        service="frontend",
        services=[tcp_service("cache", b, listen), mesh_service("orders", b)],
        tracing=tracing,
    )
    stream = await connect(listen)
    async with stream:
        await stream.send_all(b"untraced")
        assert await receive_exactly(stream, 8) == b"untraced"
        await stream.send_eof()
        assert await read_to_end(stream) == b""
    await trio.sleep(0.3)
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:
        assert (await client.get("/info", headers={"host": "orders"})).status_code == 200
    spans = await receiver.wait_for(2)
    await trio.sleep(0.3)
    assert sorted(span.kind for span in receiver.spans) == ["CLIENT", "SERVER"]
    assert all(span.attributes.get("http.request.method") == "GET" for span in receiver.spans), spans
