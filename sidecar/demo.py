"""`sidecar demo`: a small mesh on loopback, with no files to write (docs: getting-started.md).

It makes a throwaway mesh CA and one workload certificate per service, starts two replicas of the
`orders` example service and one `frontend`, each beside its own sidecar (real `sidecar run`
processes on free ports, mutual TLS between them), sends traffic to `frontend` (as a mesh client
with its own certificate) that crosses frontend's outbound sidecar and an orders sidecar's inbound,
and prints what happened: outcomes, latency, the load split across replicas, the hops and identities
a request carried, that request's trace tree across the sidecars, the tree of a request that was
retried after the fault, and (while the mesh keeps running) where to look next.

Midway through, it injects a fault: orders-2's app process is killed (its sidecar keeps running and
answers 502 for it). Frontend's sidecar then retries those requests on orders-1, ejects orders-2
after two gateway errors in a row (outlier detection), and a short burst of concurrent requests
fills the small circuit breaker on `orders`, whose overflow answers are 503 `overflow`. The summary's
"resilience" section reads frontend sidecar's `/metrics` and `/clusters` to show it; it counts the
overflows of the burst apart from those of the steady clients (refused while the burst filled the
breaker), and the steady clients' failures after the fault by cause, so that the killed replica is
not blamed for the breaker's answers.

Every sidecar exports its spans over OTLP/HTTP to a small receiver inside this process
(`demo_traces.py`); the demo client sends each request with a `traceparent` of its own, so it knows
the trace id of the plain request it shows. The receiver keeps the first traces with a retried try
(a CLIENT span with `http.request.resend_count`), and the summary shows one whose first try failed
on orders-2 and whose retry was answered by orders-1.

With `--duration` the demo stops its processes before the last summary, so that summary names no
admin URL; running until Ctrl-C, each summary says where to look.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import yaml

from .demo_traces import SpanRecord, TraceReceiver, render_tree

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TRUST_DOMAIN = "demo.local"
CLIENTS = 4  # concurrent demo clients
BURST = 6 * CLIENTS  # concurrent requests of the burst that fills the circuit breaker
MAX_REQUESTS = CLIENTS + 2  # frontend's circuit_breaker.max_requests for orders: steady traffic fits, a burst not
FAULTY = "orders-2"  # the replica whose app the fault kills
OVERFLOW = "503 overflow"  # the outcome of a request the full circuit breaker refused
REPORT_EVERY = 10.0  # seconds between summaries when running until Ctrl-C
TRACE_WAIT = 3.0  # seconds the summary waits for the example request's spans
EXPORT_DELAY_MS = "200"  # the sidecars' OTEL_BSP_SCHEDULE_DELAY: spans leave 5x sooner than by default


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    stopped: float | None = None  # when the traffic stopped (--duration)
    statuses: dict[str, int] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    example: dict[str, Any] | None = None
    example_trace: str | None = None  # the trace id the example request was sent with
    fault_at: float | None = None  # when the fault was injected (monotonic)
    before: list[int] = field(default_factory=lambda: [0, 0])  # [succeeded, all] before the fault
    after: list[int] = field(default_factory=lambda: [0, 0])  # [succeeded, all] after it
    failed_after: dict[str, int] = field(default_factory=dict)  # the steady clients' failures after it
    burst: dict[str, int] = field(default_factory=dict)  # the breaker burst's outcomes
    breaker_seen_open: bool = False  # frontend's /metrics showed the breaker open during the burst

    def record(self, status: str, latency: float, replica: str | None) -> None:
        """One steady client's request (the burst's are counted in `burst`)."""
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)
        if replica:
            self.replicas[replica] = self.replicas.get(replica, 0) + 1
        phase = self.before if self.fault_at is None else self.after
        phase[0] += status == "200"
        phase[1] += 1
        if self.fault_at is not None and status != "200":
            self.failed_after[status] = self.failed_after.get(status, 0) + 1


@dataclass
class Node:
    name: str
    admin: int
    inbound: int
    outbound: int
    app: int


class Demo:
    def __init__(self, workdir: Path) -> None:
        from .certs import init_ca

        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.apps: dict[str, subprocess.Popen[bytes]] = {}  # example app processes by replica name
        self.nodes: list[Node] = []
        self.traces = TraceReceiver(keep_traces_with=_retried_try)
        self.collector: int | None = None  # the receiver's port, once it listens
        self.ca_dir = workdir / "pki" / "ca"
        init_ca(TRUST_DOMAIN, self.ca_dir)

    def certs(self, service: str) -> Path:
        """A workload cert for spiffe://demo.local/ns/default/sa/<service> (made once per service)."""
        from .certs import issue_workload

        out = self.workdir / "pki" / service
        if not (out / "cert.pem").exists():
            issue_workload(self.ca_dir, spiffe_id(service), out)
        return out

    def client_context(self) -> ssl.SSLContext:
        """The demo client is a mesh caller too: it presents its own SPIFFE certificate."""
        out = self.certs("demo-client")
        context = ssl.create_default_context(cafile=str(out / "ca.pem"))
        context.check_hostname = False  # mesh certificates name SPIFFE IDs, not hosts
        context.load_cert_chain(out / "cert.pem", out / "key.pem")
        return context

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.processes.append(process)
        return process

    def sidecar(self, name: str, app_port: int, services: list[dict[str, Any]]) -> Node:
        node = Node(name, _free_port(), _free_port(), _free_port(), app_port)
        directory = self.workdir / "config" / name
        directory.mkdir(parents=True)
        service = name.rsplit("-", 1)[0] if name[-1].isdigit() else name
        certs = self.certs(service)
        sidecar: dict[str, Any] = {
            "kind": "Sidecar",
            "service": service,
            "tls": {part: str(certs / f"{part}.pem") for part in ("cert", "key", "ca")},
            "inbound": {"listen": f"127.0.0.1:{node.inbound}", "app": f"127.0.0.1:{app_port}"},
            "outbound": {"listen": f"127.0.0.1:{node.outbound}"},
            "admin": {"listen": f"127.0.0.1:{node.admin}"},
            "drain_timeout": "2s",
        }
        if self.collector is not None:  # every span, to the demo's own receiver
            endpoint = f"http://127.0.0.1:{self.collector}"
            sidecar["tracing"] = {"exporter": "otlp", "endpoint": endpoint, "sample_ratio": 1.0}
        docs = [sidecar, *({"kind": "Service", **s} for s in services)]
        (directory / "mesh.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": EXPORT_DELAY_MS}
        self.spawn(f"sidecar-{name}", [sys.executable, "-m", "sidecar", "run", "-c", str(directory)], env)
        self.nodes.append(node)
        return node

    def example(self, script: str, port: int, *extra: str, name: str | None = None) -> None:
        process = self.spawn(
            f"app-{script}-{port}", [sys.executable, str(EXAMPLES / f"{script}.py"), "--port", str(port), *extra]
        )
        self.apps[name or script] = process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _wait_ready(client: Any, url: str) -> None:
    import httpx

    with trio.fail_after(20):
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.1)


def _traceparent() -> tuple[str, str]:
    """A new sampled W3C trace context for one demo request: (trace id, traceparent)."""
    trace_id = f"{random.getrandbits(128) or 1:032x}"
    return trace_id, f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-01"


async def _checkout(client: Any, url: str, traceparent: str) -> tuple[str, dict[str, Any]]:
    """One GET /checkout: its outcome ("200", "503 overflow", ...) and the orders answer frontend passed
    on. A reply made by a sidecar names its reason in `x-sidecar-reason`: frontend's own sidecar sets it
    on the response we see; one orders' side made (frontend's outbound sidecar, after retries, or the
    orders sidecar) reaches us in frontend's JSON as `sidecar_reason`."""
    r = await client.get(url, headers={"host": "frontend", "traceparent": traceparent})
    body = r.json() if r.headers.get("content-type") == "application/json" else {}
    reason = r.headers.get("x-sidecar-reason") or body.get("sidecar_reason")
    return str(r.status_code) + (f" {reason}" if reason else ""), body.get("orders") or {}


async def _traffic(client: Any, url: str, tally: Tally, traces: TraceReceiver) -> None:
    import httpx

    while True:
        start = time.monotonic()
        trace_id, traceparent = _traceparent()
        try:
            status, orders = await _checkout(client, url, traceparent)
            tally.record(status, time.monotonic() - start, orders.get("replica"))
            if tally.example is None and status == "200":
                tally.example = orders
                tally.example_trace = trace_id
                traces.pin(trace_id)  # its spans outlive the receiver's limit
        except httpx.HTTPError as exc:
            tally.record(type(exc).__name__, time.monotonic() - start, None)


def _kill_app(demo: Demo, tally: Tally, name: str) -> None:
    """The fault: SIGKILL the example app behind `name`'s sidecar (by its PID; the sidecar lives on)."""
    process = demo.apps[name]
    process.kill()
    process.wait()
    tally.fault_at = time.monotonic()
    print(f"fault: {name}'s app (pid {process.pid}) killed at {tally.fault_at - tally.started:.1f} s", flush=True)


async def _burst(client: Any, url: str, tally: Tally, admin: str) -> None:
    """BURST requests at once, more than frontend's breaker on orders lets in flight: the excess is
    answered 503 `overflow` at once. While it runs, frontend's /metrics is polled for the breaker."""
    import httpx

    async def one() -> None:
        try:
            status, _ = await _checkout(client, url, _traceparent()[1])
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        tally.burst[status] = tally.burst.get(status, 0) + 1

    async def watch(cancel: trio.CancelScope) -> None:
        async with httpx.AsyncClient(timeout=2) as plain:
            with cancel:
                while True:
                    try:
                        text = (await plain.get(f"{admin}/metrics")).text
                    except httpx.HTTPError:
                        text = ""
                    if _metric(text, "sidecar_circuit_breaker_open") > 0:
                        tally.breaker_seen_open = True
                    await trio.sleep(0.005)

    watching = trio.CancelScope()
    async with trio.open_nursery() as outer:
        outer.start_soon(watch, watching)
        async with trio.open_nursery() as nursery:
            for _ in range(BURST):
                nursery.start_soon(one)
        watching.cancel()


def _metric(text: str, name: str, service: str = "orders") -> float:
    """A sample of `name{...service="orders"...}` in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name) and f'service="{service}"' in line and line[len(name)] in "{ ":
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return 0.0
    return 0.0


async def _resilience_section(tally: Tally, demo: Demo, frontend: Node) -> list[str]:
    """What retries, outlier ejection and the circuit breaker did, from frontend sidecar's admin."""
    import httpx

    admin = f"http://127.0.0.1:{frontend.admin}"
    try:
        async with httpx.AsyncClient(timeout=5) as plain:
            metrics = (await plain.get(f"{admin}/metrics")).text
            clusters = (await plain.get(f"{admin}/clusters")).json()
    except (httpx.HTTPError, ValueError) as exc:
        return ["resilience:", f"  frontend sidecar's admin did not answer: {type(exc).__name__}"]
    names = {f"127.0.0.1:{node.inbound}": node.name for node in demo.nodes}
    service: dict[str, Any] = next((s for s in clusters.get("services", []) if s.get("name") == "orders"), {})
    burst_overflows, steady_overflows = tally.burst.get(OVERFLOW, 0), tally.statuses.get(OVERFLOW, 0)

    def rate(phase: list[int]) -> str:
        return f"{phase[0]} of {phase[1]} ({phase[0] / phase[1]:.2%})" if phase[1] else "-"

    lines = ["resilience (frontend sidecar's /metrics and /clusters, service orders):"]
    if tally.fault_at is None:
        lines.append("  fault: not injected yet")
    else:
        lines.append(f"  fault:       {FAULTY}'s app killed at {tally.fault_at - tally.started:.1f} s")
    lines += [
        f"  retries:     {_metric(metrics, 'sidecar_upstream_retries_total'):.0f}"
        "  (502s from the dead replica's sidecar, tried again on the other one)",
        f"  ejections:   {_metric(metrics, 'sidecar_upstream_ejections_total'):.0f}"
        "  (outlier_detection: consecutive_gateway_errors 2)",
    ]
    for endpoint in service.get("endpoints", []):
        address = endpoint.get("address", "?")
        state = "EJECTED" if endpoint.get("ejected") else ("healthy" if endpoint.get("healthy") else "unhealthy")
        lines.append(
            f"    {names.get(address, address):<10} {address:<16} {state:<9} "
            f"active_requests {endpoint.get('active_requests', 0)}"
        )
    if tally.burst:
        lines.append(
            f"  breaker:     {burst_overflows + steady_overflows} answers 503 overflow: {burst_overflows} to the burst,"
            f" {steady_overflows} to the steady clients while the burst filled it"
        )
    else:
        lines.append(f"  breaker:     {steady_overflows} answers 503 overflow (the burst comes later)")
    lines += [
        f"               (circuit_breaker.max_requests {MAX_REQUESTS}; open now: "
        f"{'yes' if service.get('breaker_open') else 'no'}"
        + (", seen open during the burst)" if tally.breaker_seen_open else ")"),
    ]
    if tally.burst:
        outcome = ", ".join(f"{n} x {status}" for status, n in sorted(tally.burst.items()))
        lines.append(f"    burst of {sum(tally.burst.values())} concurrent requests: {outcome}")
    if tally.fault_at is None:
        lines.append(f"  succeeded:   {rate(tally.before)} (the steady clients; no fault yet)")
    else:
        lines.append(
            f"  succeeded:   before the fault {rate(tally.before)}, after it {rate(tally.after)} (the steady clients)"
        )
        first, *more = _failures_after(tally)
        lines.append(f"               after the fault: {first}")
        lines += [f"                                {part}" for part in more]
    return lines


def _failures_after(tally: Tally) -> list[str]:
    """The steady clients' failures after the fault, by cause: the breaker's apart from the rest."""
    overflows = tally.failed_after.get(OVERFLOW, 0)
    others = {status: n for status, n in tally.failed_after.items() if status != OVERFLOW}
    parts = [f"{overflows} x 503 overflow, from the breaker the burst filled;"] if overflows else []
    if others:
        parts.append("failed otherwise: " + ", ".join(f"{n} x {status}" for status, n in sorted(others.items())))
    else:
        parts.append(f"none failed because of {FAULTY}: its failed tries were retried on the other replica")
    return parts


def _trace_complete(spans: list[SpanRecord]) -> bool:
    """The frontend sidecar's SERVER span is in, and every try its CLIENT spans sent on (not
    answered by the sidecar itself) has the SERVER span of the sidecar it reached under it."""
    parents = {s.parent_span_id for s in spans}
    return any(s.kind == "SERVER" and s.service == "frontend" for s in spans) and all(
        s.span_id in parents for s in spans if s.kind == "CLIENT" and not s.attributes.get("mesh.reason")
    )


def _retried_try(span: SpanRecord) -> bool:
    """A CLIENT span of a try sent again after a failed one: its trace is worth keeping."""
    return span.kind == "CLIENT" and bool(span.attributes.get("http.request.resend_count"))


def _failed_then_retried(spans: list[SpanRecord], names: dict[str, str]) -> str | None:
    """The replica a retry reached, when a try failed on FAULTY and its retry was answered 200 by
    another replica (the interesting retried trace); None otherwise."""
    clients = [s for s in spans if s.kind == "CLIENT"]

    def replica(span: SpanRecord) -> str:
        return names.get(str(span.attributes.get("mesh.upstream.address")), "?")

    failed = any(replica(s) == FAULTY and s.attributes.get("http.response.status_code", 0) >= 500 for s in clients)
    retries = [s for s in clients if _retried_try(s) and s.attributes.get("http.response.status_code") == 200]
    other = next((replica(s) for s in retries if replica(s) != FAULTY), None)
    return other if failed else None


async def _trace_section(tally: Tally, demo: Demo) -> list[str]:
    """The plain example request's trace tree and a retried one's, once their spans are in (waiting
    at most TRACE_WAIT s in all)."""
    deadline = trio.current_time() + TRACE_WAIT
    names = {f"127.0.0.1:{node.inbound}": node.name for node in demo.nodes}
    lines: list[str] = []
    if tally.example is not None and tally.example_trace is not None:
        spans = await demo.traces.wait_for_trace(tally.example_trace, _trace_complete, TRACE_WAIT)
        lines.append(f"its trace, as the sidecars exported it (trace id {tally.example_trace}):")
        lines += [f"  {line}" for line in render_tree(spans, names)]
        expected = {"frontend": "frontend", "orders": str(tally.example.get("replica") or "orders")}
        missing = [node for service, node in expected.items() if not any(s.service == service for s in spans)]
        if missing:
            lines.append(f"  no spans from the {' and '.join(missing)} sidecar within {TRACE_WAIT:g}s (see its log)")
    chosen: tuple[str, list[SpanRecord], str | None] | None = None
    for trace_id in list(demo.traces.matched):
        wait = max(0.0, deadline - trio.current_time())
        spans = await demo.traces.wait_for_trace(trace_id, _trace_complete, wait)
        replica = _failed_then_retried(spans, names)
        if chosen is None or replica is not None:
            chosen = (trace_id, spans, replica)
        if replica is not None:
            break
    if chosen is not None:
        trace_id, spans, replica = chosen
        lines.append(f"{'and ' if lines else ''}the trace of a request retried after the fault (trace id {trace_id}):")
        if replica is not None:
            lines += [
                f"  its first try reached {FAULTY}, whose sidecar answered 502 (its app is gone);",
                f"  frontend's sidecar sent it again, to {replica}, which answered 200",
            ]
        lines += [f"  {line}" for line in render_tree(spans, names)]
    elif tally.fault_at is not None:
        lines.append(f"{'and ' if lines else ''}the trace of a request retried after the fault: none received")
    return lines


def _summary(tally: Tally, demo: Demo, frontend: Node, trace: list[str], resilience: list[str]) -> str:
    total = sum(tally.statuses.values())
    elapsed = (tally.stopped or time.monotonic()) - tally.started
    lat = sorted(tally.latencies)

    def pct(p: float) -> str:
        return f"{lat[min(len(lat) - 1, int(p * len(lat)))] * 1000:.1f} ms" if lat else "-"

    burst = sum(tally.burst.values())
    lines = [
        "",
        f"== sidecar demo: {total} requests from {CLIENTS} steady clients in {elapsed:.1f}s "
        f"({total / max(elapsed, 1e-9):.0f}/s)" + (f", and a burst of {burst} at once" if burst else "") + " ==",
        "outcomes of the steady clients:",
        *(f"  {status:<28} {count}" for status, count in sorted(tally.statuses.items())),
        f"latency through two sidecars and two apps: p50 {pct(0.5)}, p99 {pct(0.99)}",
        "orders replicas (least_request balancing):",
        *(f"  {replica:<28} {count}" for replica, count in sorted(tally.replicas.items())),
        *resilience,
    ]
    if tally.example:
        lines += [
            "one request's path:",
            "  demo client -> frontend sidecar (inbound) -> frontend app",
            "  frontend app -> frontend sidecar (outbound) -> orders sidecar (inbound) -> orders app",
            f"  orders app saw x-forwarded-for: {tally.example.get('x-forwarded-for')}",
            f"  and x-forwarded-client-cert: {tally.example.get('x-forwarded-client-cert')}",
            f"  and x-request-id: {tally.example.get('x-request-id')} (same id at every hop)",
        ]
    lines += trace
    if tally.stopped is not None:  # --duration: the processes are gone, so are their URLs
        lines += [
            f"the mesh stops with the demo; its configs and logs stay in {demo.workdir}",
            "(`sidecar demo` without --duration keeps it running, and says where to look and what to try)",
        ]
        return "\n".join(lines)
    lines += ["where to look next (while the demo runs):"]
    for node in demo.nodes:
        lines.append(f"  {node.name:<10} http://127.0.0.1:{node.admin}/ready   /live   /metrics   /clusters")
    lines += [
        f"  traces:   tracing.endpoint in each mesh.yaml (here the demo's own receiver, http://127.0.0.1:{demo.collector})",
        f"  try:      curl -k --cert {demo.certs('demo-client')}/cert.pem --key {demo.certs('demo-client')}/key.pem "
        f"-H 'Host: frontend' https://127.0.0.1:{frontend.inbound}/checkout",
        f"  configs and logs: {demo.workdir}",
    ]
    return "\n".join(lines)


async def _run(demo: Demo, duration: float | None) -> None:
    async with trio.open_nursery() as nursery:
        demo.collector = await nursery.start(demo.traces.serve)  # before any sidecar is configured
        try:
            await _mesh(demo, duration)
        except* KeyboardInterrupt:  # Ctrl-C, as the demo says: not an error (trio wraps it in a group)
            print("\nstopping", flush=True)
            raise
        finally:
            # The processes stop while the receiver still listens: their last spans have somewhere to go.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(demo.stop)
        nursery.cancel_scope.cancel()


async def _mesh(demo: Demo, duration: float | None) -> None:
    import httpx

    orders_ports = [_free_port(), _free_port()]
    orders_nodes = []
    for i, port in enumerate(orders_ports, start=1):
        demo.example("orders", port, "--name", f"orders-{i}", name=f"orders-{i}")
        orders_nodes.append(demo.sidecar(f"orders-{i}", port, []))
    frontend_port = _free_port()
    orders_service = {
        "name": "orders",
        "endpoints": [{"address": f"127.0.0.1:{n.inbound}"} for n in orders_nodes],
        "load_balancer": "least_request",
        "timeouts": {"connect": "500ms", "request": "5s"},
        "tls": {"mode": "mutual", "identity": spiffe_id("orders")},
        # The policies the fault shows at work. Retries keep their defaults (2 on gateway errors);
        # two gateway errors in a row eject an endpoint for longer than a demo run; and few requests
        # may be in flight, so that a burst fills the breaker (and steady traffic does not).
        "outlier_detection": {"consecutive_gateway_errors": 2, "base_ejection": "300s", "interval": "1s"},
        "circuit_breaker": {"max_requests": MAX_REQUESTS},
    }
    frontend = demo.sidecar("frontend", frontend_port, [orders_service])
    demo.example("frontend", frontend_port, "--sidecar", f"127.0.0.1:{frontend.outbound}")
    async with httpx.AsyncClient(timeout=10) as plain:
        for node in demo.nodes:
            await _wait_ready(plain, f"http://127.0.0.1:{node.admin}/ready")
            await _wait_ready(plain, f"http://127.0.0.1:{node.app}/healthz")
    async with httpx.AsyncClient(timeout=10, verify=demo.client_context()) as client:
        print(
            f"mesh up: {len(demo.nodes)} sidecars with mutual TLS, {len(demo.nodes)} apps; sending traffic"
            + (f" for {duration:g}s" if duration else " (Ctrl-C to stop)"),
            flush=True,
        )
        tally = Tally()
        url = f"https://127.0.0.1:{frontend.inbound}/checkout"
        admin = f"http://127.0.0.1:{frontend.admin}"

        async def summary() -> str:
            trace = await _trace_section(tally, demo)
            return _summary(tally, demo, frontend, trace, await _resilience_section(tally, demo, frontend))

        async with trio.open_nursery() as nursery:
            for _ in range(CLIENTS):
                nursery.start_soon(_traffic, client, url, tally, demo.traces)
            if duration is not None:  # the fault at a third of the run, the burst at two thirds
                await trio.sleep(duration / 3)
                _kill_app(demo, tally, FAULTY)
                await trio.sleep(duration / 3)
                await _burst(client, url, tally, admin)
                await trio.sleep(max(0.0, tally.started + duration - time.monotonic()))
                nursery.cancel_scope.cancel()
                tally.stopped = time.monotonic()
            else:  # the fault after the first report, the burst halfway to the second
                await trio.sleep(REPORT_EVERY)
                print(await summary(), flush=True)
                _kill_app(demo, tally, FAULTY)
                await trio.sleep(REPORT_EVERY / 2)
                await _burst(client, url, tally, admin)
                await trio.sleep(REPORT_EVERY / 2)
                while True:
                    print(await summary(), flush=True)
                    await trio.sleep(REPORT_EVERY)
        print(await summary(), flush=True)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def run_demo(*, duration: float | None = None, log_format: str = "json") -> int:
    missing = [name for name in ("hypercorn", "httpx", "opentelemetry.proto") if not _installed(name)]
    if missing or not EXAMPLES.is_dir():
        print(
            "sidecar demo needs the repository's examples/ and the demo extras "
            f"(pip install -e '.[demo]'); missing: {', '.join(missing) or 'examples/'}",
            file=sys.stderr,
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    demo = Demo(workdir)
    try:
        trio.run(_run, demo, duration)
    except* KeyboardInterrupt:
        pass  # said and stopped in _run
    finally:
        demo.stop()
    return 0
