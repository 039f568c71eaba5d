"""The request paths compared side by side: each setup builds its proxies and returns the front door.

A setup is a function `(bench, procs) -> Front`: it starts whatever sits between the load generator
and the origin (nothing, one or two nginx, one or two sidecars) in `procs`, pinned to the proxy
core, and says where the load generator should connect and which processes count as "the proxy" for
CPU and RSS. To add a column, write such a function and add it to `SETUPS` (see `two_sidecars_mtls`);
`fixed_rate=True` also runs the fixed-rate latency steps for it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from harness import nginx
from harness.nginx import NginxServer
from harness.procs import Proc, ProcessSet, free_ports, pinned
from harness.sidecars import (
    SidecarLauncher,
    SidecarSpec,
    TlsFiles,
    Upstream,
    issue_certs,
    issue_certs_with_dns,
    spiffe_id,
)


@dataclass
class Bench:
    """Everything shared by all setups of one run."""

    tools: dict[str, str]
    run_dir: Path
    venv: Path
    origin: NginxServer
    launcher: SidecarLauncher
    loadgen_core: int
    proxy_core: int


@dataclass
class Front:
    """Where the load generator connects, and the processes under test (empty for direct)."""

    http_port: int
    h2_port: int | None  # None: this front has no HTTP/2 listener at all
    proxies: list[Proc]


@dataclass(frozen=True)
class Setup:
    key: str  # used on the command line (--setups) and in the JSON results
    title: str  # column header
    build: Callable[[Bench, ProcessSet], Front]
    default: bool = True  # part of a run without --setups
    fixed_rate: bool = False  # also run the fixed-rate (open-loop) latency steps, 500 and 2,000 req/s
    idle: bool = False  # also measure memory per idle keep-alive connection (harness/idle.py)


def direct(bench: Bench, procs: ProcessSet) -> Front:
    """Load generator straight to the origin: the reference every ratio divides by."""
    return Front(bench.origin.http_port, bench.origin.h2_port, [])


def nginx_proxy(bench: Bench, procs: ProcessSet) -> Front:
    """nginx reverse proxy with upstream keep-alive, one worker on the proxy core."""
    http_port, h2_port = free_ports(2)
    server = nginx.start_proxy(
        procs, bench.tools["nginx"], (http_port, h2_port), bench.origin.http_port, bench.proxy_core
    )
    return Front(http_port, h2_port, [server.proc])


PAIR_SERVER = "origin"  # the workload behind the mesh hop: sidecar B / nginx B
PAIR_CLIENT = "bench-client"  # the calling workload: sidecar A / nginx A
PAIR_SERVER_DNS = "origin.bench.local"  # the DNS SAN nginx A checks on nginx B's certificate


def nginx_pair_mtls(bench: Bench, procs: ProcessSet) -> Front:
    """The reference for a mesh hop: nginx A (plain HTTP/1.1 and h2c in) -> HTTPS with mutual TLS,
    kept alive -> nginx B (`ssl_verify_client on`) -> origin, one worker each on the proxy core.

    Certificates as the sidecars' (`sidecar certs`, same names), B's re-signed with a DNS name that
    A verifies (`proxy_ssl_verify on`, `proxy_ssl_name`)."""
    a_http, a_h2, b_https = free_ports(3)
    certs_dir = bench.run_dir / "certs-nginx-pair"
    tls = issue_certs_with_dns(bench.venv, bench.tools["openssl"], certs_dir, PAIR_SERVER, PAIR_CLIENT, PAIR_SERVER_DNS)
    nginx_bin, core = bench.tools["nginx"], bench.proxy_core
    b = nginx.start_mtls_server(
        procs, nginx_bin, "nginx-2-mtls-b", b_https, bench.origin.http_port, tls[PAIR_SERVER], core
    )
    a = nginx.start_mtls_client(
        procs, nginx_bin, "nginx-2-mtls-a", (a_http, a_h2), (b_https, PAIR_SERVER_DNS), tls[PAIR_CLIENT], core
    )
    return Front(a_http, a_h2, [a.proc, b])


def one_sidecar(
    bench: Bench,
    procs: ProcessSet,
    name: str = "sidecar-1",
    policies: tuple[str, ...] = (),
    sidecar_lines: tuple[str, ...] = (),
    log_level: str = "warning",
) -> Front:
    """Load generator -> sidecar outbound -> origin (a Service whose endpoint is the origin)."""
    outbound, admin = free_ports(2)
    spec = SidecarSpec(
        name=name,
        service="bench-client",
        outbound_port=outbound,
        admin_port=admin,
        upstreams=(Upstream("origin", bench.origin.http_port, policies=policies),),
        sidecar_lines=sidecar_lines,
        log_level=log_level,
    )
    return Front(outbound, outbound, [bench.launcher.start(procs, spec)])


NO_RETRIES = ("retries: {attempts: 0}",)
ALL_POLICIES = (
    "timeouts: {connect: 1s, request: 15s, per_try: 5s, idle: 60s}",
    "retries: {attempts: 2, on: [connect-failure, refused-stream, reset, gateway-error, retriable-status],"
    " retriable_status: [409], budget: {percent: 20, min_per_second: 3}, buffer: 64KiB}",
    "circuit_breaker: {max_connections: 1024, max_pending: 1024, max_requests: 1024, max_retries: 3}",
    "outlier_detection: {consecutive_5xx: 5, consecutive_gateway_errors: 5, interval: 10s, base_ejection: 30s}",
    f"health_check: {{path: {nginx.SMALL_PATH}, interval: 1s, timeout: 1s}}",
)


def one_sidecar_no_retries(bench: Bench, procs: ProcessSet) -> Front:
    """One sidecar with as few policies as the config allows: no retries, no health checks."""
    return one_sidecar(bench, procs, "sidecar-1-bare", NO_RETRIES)


def one_sidecar_all_policies(bench: Bench, procs: ProcessSet) -> Front:
    """One sidecar with every resilience policy configured: per-try timeout, retries with a budget,
    breakers, outlier detection, active health checks every second."""
    return one_sidecar(bench, procs, "sidecar-1-policies", ALL_POLICIES)


def trace_sink(bench: Bench, procs: ProcessSet) -> tuple[str, ...]:
    """Start a local OTLP sink (`trace_sink.py`) on the load-generator core; the Sidecar lines that
    send every span there (sample ratio 1.0)."""
    (sink_port,) = free_ports(1)
    sink = Path(__file__).resolve().parent / "trace_sink.py"
    procs.start("trace-sink", pinned(bench.loadgen_core, [sys.executable, str(sink), str(sink_port)]))
    return (f"tracing: {{exporter: otlp, endpoint: 'http://127.0.0.1:{sink_port}', sample_ratio: 1.0}}",)


def one_sidecar_traced(bench: Bench, procs: ProcessSet) -> Front:
    """One sidecar recording and exporting a span for every request; the export thread runs in the
    sidecar's process, so its CPU counts."""
    return one_sidecar(bench, procs, "sidecar-1-traced", sidecar_lines=trace_sink(bench, procs))


def two_sidecars_mtls_h2_traced(bench: Bench, procs: ProcessSet) -> Front:
    """The mesh path with HTTP/2 between the sidecars, both tracing every request (A's CLIENT span,
    B's SERVER span) to the local sink."""
    tls = issue_certs(bench.venv, bench.run_dir / "certs", ["origin", "bench-client"])
    return two_sidecars(bench, procs, tls, protocol="auto", sidecar_lines=trace_sink(bench, procs))


def one_sidecar_logged(bench: Bench, procs: ProcessSet) -> Front:
    """One sidecar writing its JSON access log (one line per request, to its stdout log file)."""
    return one_sidecar(bench, procs, "sidecar-1-logged", log_level="info")


def two_sidecars(
    bench: Bench,
    procs: ProcessSet,
    tls: dict[str, TlsFiles] | None = None,
    protocol: str = "http1",
    sidecar_lines: tuple[str, ...] = (),
) -> Front:
    """Load generator -> sidecar A outbound -> sidecar B inbound -> origin, both on the proxy core.

    Without `tls`, the hop between A and B is plaintext: B's inbound runs in permissive mode (an
    inbound listener always holds a certificate), A calls it with `tls: {mode: disabled}`.
    `protocol` is the Service's protocol for the hop between A and B (http1, or auto: HTTP/2 by ALPN)."""
    a_out, a_admin, b_in, b_out, b_admin = free_ports(5)
    prefix = ("sidecar-2-mtls" if tls else "sidecar-2") + ("-h2" if protocol != "http1" else "")
    prefix += "-traced" if sidecar_lines else ""
    b_tls = tls["origin"] if tls else issue_certs(bench.venv, bench.run_dir / "certs-plain", ["origin"])["origin"]
    server = SidecarSpec(
        name=f"{prefix}-b",
        service="origin",
        outbound_port=b_out,
        admin_port=b_admin,
        inbound_port=b_in,
        app_port=bench.origin.http_port,
        tls=b_tls,
        inbound_mode="strict" if tls else "permissive",
        sidecar_lines=sidecar_lines,
    )
    client = SidecarSpec(
        name=f"{prefix}-a",
        service="bench-client",
        outbound_port=a_out,
        admin_port=a_admin,
        upstreams=(Upstream("origin", b_in, identity=spiffe_id("origin") if tls else None, protocol=protocol),),
        tls=tls["bench-client"] if tls else None,
        sidecar_lines=sidecar_lines,
    )
    proc_b = bench.launcher.start(procs, server)
    proc_a = bench.launcher.start(procs, client)
    return Front(a_out, a_out, [proc_a, proc_b])


def two_sidecars_mtls(bench: Bench, procs: ProcessSet) -> Front:
    """The real mesh path: as two_sidecars, with mutual TLS between A and B (certs from `sidecar certs`)."""
    tls = issue_certs(bench.venv, bench.run_dir / "certs", ["origin", "bench-client"])
    return two_sidecars(bench, procs, tls)


def two_sidecars_mtls_h2(bench: Bench, procs: ProcessSet) -> Front:
    """As two_sidecars_mtls, with HTTP/2 between A and B (`protocol: auto`, ALPN h2): every request
    from the load generator is multiplexed onto one connection between the sidecars."""
    tls = issue_certs(bench.venv, bench.run_dir / "certs", ["origin", "bench-client"])
    return two_sidecars(bench, procs, tls, protocol="auto")


SETUPS = [
    Setup("direct", "direct", direct, fixed_rate=True),
    Setup("nginx-proxy", "nginx-proxy", nginx_proxy, fixed_rate=True),
    Setup("nginx-2-mtls", "nginx pair mTLS", nginx_pair_mtls, fixed_rate=True),
    Setup("sidecar-1", "1 sidecar", one_sidecar, fixed_rate=True, idle=True),
    Setup("sidecar-1-bare", "1 sidecar, no retries", one_sidecar_no_retries, default=False),
    Setup("sidecar-1-policies", "1 sidecar, all policies", one_sidecar_all_policies, default=False),
    Setup("sidecar-1-traced", "1 sidecar, tracing 100%", one_sidecar_traced, default=False),
    Setup("sidecar-1-logged", "1 sidecar, access log", one_sidecar_logged, default=False),
    Setup("sidecar-2", "2 sidecars", two_sidecars),
    Setup("sidecar-2-mtls", "2 sidecars mTLS", two_sidecars_mtls, fixed_rate=True),
    Setup("sidecar-2-mtls-h2", "2 sidecars mTLS h2 hop", two_sidecars_mtls_h2, fixed_rate=True),
    Setup("sidecar-2-mtls-h2-traced", "2 sidecars h2 hop, tracing", two_sidecars_mtls_h2_traced, default=False),
]
ALWAYS = ("direct", "nginx-proxy")  # run whatever --setups names
REFERENCES = (*ALWAYS, "nginx-2-mtls")  # ratio rows against these, each when it ran


class Selectable(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def default(self) -> bool: ...


S = TypeVar("S", bound=Selectable)


def select_from(setups: Sequence[S], references: Iterable[str], keys: str | None, kind: str = "") -> list[S]:
    """The setups named on the command line ("all" for every one; none: the default ones), with
    the references always in; an unknown name ends the run with the known ones."""
    if keys is None:
        return [setup for setup in setups if setup.default]
    if keys == "all":
        return list(setups)
    wanted = {key.strip() for key in keys.split(",") if key.strip()}
    unknown = wanted - {setup.key for setup in setups}
    if unknown:
        known = ", ".join(setup.key for setup in setups)
        raise SystemExit(f"bench: unknown {kind}setup(s) {', '.join(sorted(unknown))}; known: {known}, all")
    wanted |= set(references)
    return [setup for setup in setups if setup.key in wanted]


def select(keys: str | None) -> list[Setup]:
    """Setups named on the command line ("all" for every one), direct and nginx-proxy always in."""
    return select_from(SETUPS, ALWAYS, keys)
