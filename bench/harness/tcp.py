"""`bench/run.py tcp`: opaque TCP through two sidecars (mTLS tunnel between them) next to two nginx
`stream` proxies (mTLS between them) and the direct path, in one run.

Columns (setups), each started fresh on the proxy core:
  direct                 load generator -> origin
  nginx-stream           nginx A (stream, plain in) -> mTLS -> nginx B (stream, `ssl_verify_client on`) -> origin;
                         A verifies B (`proxy_ssl_verify on`) and resumes TLS sessions (its default)
  nginx-stream-noreuse   opt-in: as nginx-stream with `proxy_ssl_session_reuse off`: a full handshake per
                         connection (the sidecars resume sessions, as nginx does by default)
  sidecars               sidecar A (a `protocol: tcp` Service's listen port) -> tunnel (ALPN sidecar-tcp/1,
                         mTLS) -> sidecar B (`inbound.tcp_ports`) -> origin
Both proxy pairs use the same certificates: `sidecar certs init/issue` from one dev CA, the server-side
one re-signed by that CA with a DNS name besides its SPIFFE ID, since nginx checks a name
(`proxy_ssl_name`) and the SPIFFE certificate has none.

Origins, on the load-generator core: tcp_sink.py (reads to the end, answers the count) and redis-server.
Rows (steps): streaming for `duration` seconds over 1 and over 4 connections (MB/s, MB per proxy
CPU-s); PING over 50 persistent connections (requests/s, per proxy CPU-s); PING at one connection
(p50/p99, added latency vs direct); PING with a new connection per request, 50 at a time (`-k 0`:
connections/s, per proxy CPU-s); peak RSS. CPU is utime + stime of the proxy processes around each step.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import loadgen, nginx
from harness.measure import SetupResult, Timing
from harness.procs import Proc, ProcessSet, StartFailed, cpu_seconds, free_ports, peak_rss_kib, pinned, wait_tcp_open
from harness.report import Figure
from harness.setups import select_from
from harness.sidecars import SidecarLauncher, SidecarSpec, TcpService, TlsFiles, issue_certs_with_dns, spiffe_id

CLIENTS = 50  # redis-benchmark connections, as wrk's 50 in the HTTP run
STREAMS = 4  # connections of the multi-connection throughput step
SERVER = "cache"  # the server-side workload (sidecar B / nginx B)
CLIENT = "web"  # the client-side workload (sidecar A / nginx A)
SERVER_DNS = "cache.bench.local"  # the DNS SAN added to the server-side certificate for nginx
MB = 1e6

FIGURES = (
    Figure("mb_s_1", "MB/s, 1 conn", "higher", 1),
    Figure("mb_per_cpu_s_1", "MB per proxy CPU-s, 1 conn", "higher", 1, proxy_only=True),
    Figure("cpu_s_1", "proxy CPU-s in that run", "lower", 2, proxy_only=True),
    Figure(f"mb_s_{STREAMS}", f"MB/s, {STREAMS} conns", "higher", 1),
    Figure(f"mb_per_cpu_s_{STREAMS}", f"MB per proxy CPU-s, {STREAMS} conns", "higher", 1, proxy_only=True),
    Figure("rps", f"PING requests/s, {CLIENTS} conns", "higher", 0),
    Figure("req_per_cpu_s", "requests per proxy CPU-s", "higher", 0, proxy_only=True),
    Figure("p50_ms", "p50 ms, 1 conn", "lower", 3),
    Figure("p99_ms", "p99 ms, 1 conn", "lower", 3),
    Figure("added_p50_ms", "added p50 ms vs direct", "lower", 3),
    Figure("added_p99_ms", "added p99 ms vs direct", "lower", 3),
    Figure("conn_s", f"new connections/s, {CLIENTS} at a time", "higher", 0),
    Figure("conn_per_cpu_s", "connections per proxy CPU-s", "higher", 1, proxy_only=True),
    Figure("rss_mib", "peak RSS MiB, proxy", "lower", 1, proxy_only=True),
)
REFERENCES = ("direct", "nginx-stream")
TARGET = (0.25, 0.5)  # sidecar / nginx MB per CPU-s: the project's floor and aim


@dataclass
class TcpBench:
    """Everything shared by the setups of one TCP run."""

    tools: dict[str, str]
    run_dir: Path
    launcher: SidecarLauncher
    loadgen_core: int
    proxy_core: int
    sink_port: int
    redis_port: int
    certs: dict[str, TlsFiles]  # SERVER (with the DNS SAN) and CLIENT


@dataclass
class TcpFront:
    """Where the load generators connect (the sink's and redis's front ports), and the proxies."""

    sink_port: int
    redis_port: int
    proxies: list[Proc]


@dataclass(frozen=True)
class TcpSetup:
    key: str
    title: str
    build: Callable[[TcpBench, ProcessSet], TcpFront]
    default: bool = True


# -- origins and certificates ---------------------------------------------------------------------


def start_origins(procs: ProcessSet, tools: dict[str, str], core: int) -> tuple[int, int]:
    """tcp_sink.py and redis-server (no persistence) on `core`; returns (sink port, redis port)."""
    sink_port, redis_port = free_ports(2)
    sink = Path(__file__).resolve().parent / "tcp_sink.py"
    proc = procs.start("tcp-sink", pinned(core, [sys.executable, str(sink), str(sink_port)]))
    check_started(procs, proc, sink_port)
    argv = [tools["redis-server"], "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--protected-mode", "no", "--dir", str(procs.log_dir)]
    argv += ["--maxclients", "10000", "--tcp-backlog", "4096", "--daemonize", "no"]
    proc = procs.start("redis-server", pinned(core, argv))
    check_started(procs, proc, redis_port)
    return sink_port, redis_port


def check_started(procs: ProcessSet, proc: Proc, port: int) -> None:
    problem = wait_tcp_open(port, proc, timeout=10.0)
    if problem:
        detail = proc.output_tail()
        procs.stop(proc)
        raise StartFailed(f"{proc.name} did not start: {problem}", detail)


def make_certs(venv: Path, openssl: str, out: Path) -> dict[str, TlsFiles]:
    """A dev CA and the two workload certs (`sidecar certs`); the server-side one re-signed by the
    same CA with SERVER_DNS added to its SAN (same key, same SPIFFE ID), so nginx can check a name."""
    return issue_certs_with_dns(venv, openssl, out, SERVER, CLIENT, SERVER_DNS)


# -- setups ---------------------------------------------------------------------------------------


def direct(bench: TcpBench, procs: ProcessSet) -> TcpFront:
    return TcpFront(bench.sink_port, bench.redis_port, [])


def nginx_stream(bench: TcpBench, procs: ProcessSet, session_reuse: bool = True) -> TcpFront:
    """nginx B (mTLS in, plain out), then nginx A (plain in, mTLS out to B), one worker each."""
    a_sink, a_redis, b_sink, b_redis = free_ports(4)
    name = "nginx-stream" if session_reuse else "nginx-stream-noreuse"
    server, client = bench.certs[SERVER], bench.certs[CLIENT]
    common = {"STREAM_MODULE": bench.tools["stream-module"]}
    b = nginx.start_listening(
        procs,
        bench.tools["nginx"],
        f"{name}-b",
        "stream-server.conf",
        {
            **common,
            "CERT": server.cert,
            "KEY": server.key,
            "CA": server.ca,
            "SINK_PORT": b_sink,
            "REDIS_PORT": b_redis,
            "ORIGIN_SINK_PORT": bench.sink_port,
            "ORIGIN_REDIS_PORT": bench.redis_port,
        },
        b_redis,
        bench.proxy_core,
    )
    a = nginx.start_listening(
        procs,
        bench.tools["nginx"],
        f"{name}-a",
        "stream-client.conf",
        {
            **common,
            "CERT": client.cert,
            "KEY": client.key,
            "CA": client.ca,
            "PEER_NAME": SERVER_DNS,
            "SESSION_REUSE": "on" if session_reuse else "off",
            "SINK_PORT": a_sink,
            "REDIS_PORT": a_redis,
            "PEER_SINK_PORT": b_sink,
            "PEER_REDIS_PORT": b_redis,
        },
        a_redis,
        bench.proxy_core,
    )
    return TcpFront(a_sink, a_redis, [a, b])


def nginx_stream_noreuse(bench: TcpBench, procs: ProcessSet) -> TcpFront:
    return nginx_stream(bench, procs, session_reuse=False)


def sidecars(bench: TcpBench, procs: ProcessSet) -> TcpFront:
    """Sidecar B (inbound, tcp_ports: the two origin ports), then sidecar A with one tcp Service per
    origin (its listen port is the front; mTLS to B asking for the origin's port)."""
    a_sink, a_redis, a_out, a_admin, b_in, b_out, b_admin, b_app = free_ports(8)
    server = SidecarSpec(
        name="sidecar-tcp-b",
        service=SERVER,
        outbound_port=b_out,
        admin_port=b_admin,
        inbound_port=b_in,
        app_port=b_app,  # HTTP app port: nothing listens there, no HTTP in this run
        tls=bench.certs[SERVER],
        tcp_ports=(bench.sink_port, bench.redis_port),
    )
    identity = spiffe_id(SERVER)
    client = SidecarSpec(
        name="sidecar-tcp-a",
        service=CLIENT,
        outbound_port=a_out,
        admin_port=a_admin,
        tls=bench.certs[CLIENT],
        tcp_services=(
            TcpService("sink", a_sink, b_in, bench.sink_port, identity),
            TcpService("redis", a_redis, b_in, bench.redis_port, identity),
        ),
    )
    proc_b = bench.launcher.start(procs, server)
    proc_a = bench.launcher.start(procs, client)
    return TcpFront(a_sink, a_redis, [proc_a, proc_b])


SETUPS = [
    TcpSetup("direct", "direct", direct),
    TcpSetup("nginx-stream", "2 nginx stream mTLS", nginx_stream),
    TcpSetup("nginx-stream-noreuse", "2 nginx, no TLS resumption", nginx_stream_noreuse, default=False),
    TcpSetup("sidecars", "2 sidecars mTLS tunnel", sidecars),
]


def select(keys: str | None) -> list[TcpSetup]:
    """Setups named on the command line ("all" for every one), the references always in."""
    return select_from(SETUPS, REFERENCES, keys, "tcp ")


# -- measuring ------------------------------------------------------------------------------------


def measure(bench: TcpBench, setup: TcpSetup, timing: Timing) -> SetupResult:
    """Build the setup in its own process set (stopped afterwards, whatever happens) and measure it."""
    result = SetupResult(setup.key, setup.title)
    with ProcessSet(bench.run_dir) as procs:
        try:
            front = setup.build(bench, procs)
            smoke_check(front)
        except StartFailed as exc:
            result.failure, result.detail = exc.reason, exc.detail
            return result
        except (OSError, RuntimeError, ValueError) as exc:
            result.failure = f"{exc.__class__.__name__}: {exc}"
            return result
        Steps(bench, front, timing, result).run()
    return result


def smoke_check(front: TcpFront) -> None:
    """1 MiB to the sink must be counted whole, and a PING to redis answered +PONG."""
    size = 1 << 20
    try:
        with socket.create_connection(("127.0.0.1", front.sink_port), timeout=5.0) as sock:
            sock.sendall(bytes(size))
            sock.shutdown(socket.SHUT_WR)
            answer = read_to_end(sock)
        if answer.strip() != str(size).encode():
            raise StartFailed(f"smoke transfer of {size} bytes: the sink answered {answer[:60]!r}", tails(front))
        with socket.create_connection(("127.0.0.1", front.redis_port), timeout=5.0) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
        if answer != b"+PONG\r\n":
            raise StartFailed(f"smoke PING answered {answer[:60]!r}", tails(front))
    except OSError as exc:
        raise StartFailed(f"smoke check failed: {exc!r}", tails(front)) from exc


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while True:
        got = sock.recv(4096)
        if not got:
            return data
        data += got


def tails(front: TcpFront) -> str:
    return "\n".join(proc.output_tail() for proc in front.proxies)


class Steps:
    """The steps against one front; redis-benchmark's request counts are sized from the warm-up so
    that each step lasts about `timing.duration` seconds."""

    def __init__(self, bench: TcpBench, front: TcpFront, timing: Timing, result: SetupResult) -> None:
        self.bench, self.front, self.timing, self.result = bench, front, timing, result
        self.pids = [pid for proc in front.proxies for pid in proc.tree()]
        self.rates = {"keepalive": 5000.0, "latency": 1000.0, "connect": 200.0}

    def run(self) -> None:
        self.warm_up()
        steps = (self.stream_1, self.stream_many, self.requests, self.latency, self.connections)
        for step in steps:
            step()
            dead = [proc for proc in self.front.proxies if not proc.alive()]
            if dead:
                code = dead[0].popen.returncode
                self.result.failure = f"{dead[0].name} exited with code {code} during {step.__name__}"
                self.result.detail = tails(self.front)
                return
        rss = peak_rss_kib(self.pids)
        self.result.figures["rss_mib"] = rss / 1024 if rss is not None else None

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def redis(self, clients: int, requests: int, keepalive: bool) -> loadgen.RedisResult:
        limit = 4 * self.timing.duration + 60
        tool, core, port = self.bench.tools["redis-benchmark"], self.bench.loadgen_core, self.front.redis_port
        return loadgen.run_redis_benchmark(tool, core, port, clients, requests, keepalive, limit)

    def calibrate(self, kind: str, clients: int, requests: int, keepalive: bool) -> None:
        run = self.redis(clients, requests, keepalive)
        if run.requests and run.seconds:
            self.rates[kind] = run.requests / run.seconds

    def sized(self, kind: str) -> int:
        return max(200, int(self.rates[kind] * self.timing.duration))

    def warm_up(self) -> None:
        """A short stream, then one probe per redis step: warms the proxies and sizes the steps."""
        loadgen.run_stream(self.bench.loadgen_core, self.front.sink_port, self.timing.warmup, 1)
        self.calibrate("keepalive", CLIENTS, 2000 * self.timing.warmup, keepalive=True)
        self.calibrate("latency", 1, 500 * self.timing.warmup, keepalive=True)
        self.calibrate("connect", CLIENTS, 100 * self.timing.warmup, keepalive=False)

    def stream(self, connections: int) -> None:
        before = self.cpu()
        run = loadgen.run_stream(self.bench.loadgen_core, self.front.sink_port, self.timing.duration, connections)
        cpu = self.cpu() - before if self.pids else None
        figures = self.result.figures
        megabytes = run.counted / MB
        figures[f"mb_s_{connections}"] = megabytes / run.seconds if run.seconds and run.counted else None
        figures[f"mb_per_cpu_s_{connections}"] = megabytes / cpu if cpu and run.counted else None
        figures[f"cpu_s_{connections}"] = cpu
        self.note([f"mb_s_{connections}", f"mb_per_cpu_s_{connections}"], run.problem)
        self.result.raw[f"stream_{connections}"] = {**run.__dict__, "cpu_s": cpu}

    def stream_1(self) -> None:
        self.stream(1)

    def stream_many(self) -> None:
        self.stream(STREAMS)

    def requests(self) -> None:
        before = self.cpu()
        run = self.redis(CLIENTS, self.sized("keepalive"), keepalive=True)
        cpu = self.cpu() - before if self.pids else None
        self.result.figures["rps"] = run.rps or None
        self.result.figures["req_per_cpu_s"] = run.requests / cpu if cpu and run.requests else None
        self.note(["rps", "req_per_cpu_s"], run.problem)
        self.result.raw["requests"] = {**run.__dict__, "cpu_s": cpu}

    def latency(self) -> None:
        run = self.redis(1, self.sized("latency"), keepalive=True)
        self.result.figures["p50_ms"] = run.p50_ms
        self.result.figures["p99_ms"] = run.p99_ms
        self.note(["p50_ms", "p99_ms"], run.problem)
        self.result.raw["latency"] = run.__dict__

    def connections(self) -> None:
        before = self.cpu()
        run = self.redis(CLIENTS, self.sized("connect"), keepalive=False)
        cpu = self.cpu() - before if self.pids else None
        self.result.figures["conn_s"] = run.rps or None
        self.result.figures["conn_per_cpu_s"] = run.requests / cpu if cpu and run.requests else None
        self.note(["conn_s", "conn_per_cpu_s"], run.problem)
        self.result.raw["connections"] = {**run.__dict__, "cpu_s": cpu}

    def note(self, keys: list[str], problem: str | None) -> None:
        if problem:
            for key in keys:
                self.result.notes[key] = problem


def summary(results: list[SetupResult]) -> list[str]:
    """The ratios the project tracks: sidecars / nginx-stream per proxy CPU-second."""
    by_key = {result.key: result for result in results}
    mine, nginx_ = by_key.get("sidecars"), by_key.get("nginx-stream")
    if mine is None or nginx_ is None:
        return []
    parts = []
    for key, label in (
        ("mb_per_cpu_s_1", "MB per CPU-s (1 conn)"),
        (f"mb_per_cpu_s_{STREAMS}", f"MB per CPU-s ({STREAMS} conns)"),
        ("req_per_cpu_s", "requests per CPU-s"),
        ("conn_per_cpu_s", "connections per CPU-s"),
    ):
        value, base = mine.figures.get(key), nginx_.figures.get(key)
        parts.append(f"{label} {value / base:.2f}x" if value and base else f"{label} n/a")
    floor, aim = TARGET
    return [f"sidecars / nginx-stream: {'; '.join(parts)}  (MB per CPU-s target: at least {floor}x, aim {aim}x)"]
