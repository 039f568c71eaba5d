"""`sidecar demo`: a small mesh on loopback, with no files to write (SPEC §9).

It makes a throwaway mesh CA and one workload certificate per service, starts two replicas of the
`orders` example service and one `frontend`, each beside its own sidecar (real `sidecar run`
processes on free ports, mutual TLS between them), sends traffic to `frontend` (as a mesh client
with its own certificate) that crosses frontend's outbound sidecar and an orders sidecar's inbound,
and prints what happened: outcomes, latency, the load split across replicas, the hops and identities
a request carried, that request's trace tree across the sidecars, and where to look next.

Every sidecar exports its spans over OTLP/HTTP to a small receiver inside this process
(`demo_traces.py`); the demo client sends each request with a `traceparent` of its own, so it knows
the trace id of the request it shows.
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

    def record(self, status: str, latency: float, replica: str | None) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)
        if replica:
            self.replicas[replica] = self.replicas.get(replica, 0) + 1


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
        self.nodes: list[Node] = []
        self.traces = TraceReceiver()
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

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        self.processes.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env))

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

    def example(self, script: str, port: int, *extra: str) -> None:
        self.spawn(
            f"app-{script}-{port}", [sys.executable, str(EXAMPLES / f"{script}.py"), "--port", str(port), *extra]
        )

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


async def _traffic(client: Any, url: str, tally: Tally, traces: TraceReceiver) -> None:
    import httpx

    while True:
        start = time.monotonic()
        trace_id, traceparent = _traceparent()
        try:
            r = await client.get(url, headers={"host": "frontend", "traceparent": traceparent})
            body = r.json() if r.headers.get("content-type") == "application/json" else {}
            orders = body.get("orders") or {}
            status = str(r.status_code) + (
                f" {r.headers['x-sidecar-reason']}" if "x-sidecar-reason" in r.headers else ""
            )
            tally.record(status, time.monotonic() - start, orders.get("replica"))
            if tally.example is None and r.status_code == 200:
                tally.example = orders
                tally.example_trace = trace_id
                traces.pin(trace_id)  # its spans outlive the receiver's limit
        except httpx.HTTPError as exc:
            tally.record(type(exc).__name__, time.monotonic() - start, None)


def _trace_complete(spans: list[SpanRecord]) -> bool:
    """The frontend sidecar's SERVER span is in, and every try its CLIENT spans sent on (not
    answered by the sidecar itself) has the SERVER span of the sidecar it reached under it."""
    parents = {s.parent_span_id for s in spans}
    return any(s.kind == "SERVER" and s.service == "frontend" for s in spans) and all(
        s.span_id in parents for s in spans if s.kind == "CLIENT" and not s.attributes.get("mesh.reason")
    )


async def _trace_section(tally: Tally, demo: Demo) -> list[str]:
    """The example request's trace tree, once its spans are in (waiting at most TRACE_WAIT s)."""
    if tally.example is None or tally.example_trace is None:
        return []
    spans = await demo.traces.wait_for_trace(tally.example_trace, _trace_complete, TRACE_WAIT)
    names = {f"127.0.0.1:{node.inbound}": node.name for node in demo.nodes}
    lines = [f"its trace, as the sidecars exported it (trace id {tally.example_trace}):"]
    lines += [f"  {line}" for line in render_tree(spans, names)]
    expected = {"frontend": "frontend", "orders": str(tally.example.get("replica") or "orders")}
    missing = [node for service, node in expected.items() if not any(s.service == service for s in spans)]
    if missing:
        lines.append(f"  no spans from the {' and '.join(missing)} sidecar within {TRACE_WAIT:g}s (see its log)")
    return lines


def _summary(tally: Tally, demo: Demo, frontend: Node, trace: list[str]) -> str:
    total = sum(tally.statuses.values())
    elapsed = (tally.stopped or time.monotonic()) - tally.started
    lat = sorted(tally.latencies)

    def pct(p: float) -> str:
        return f"{lat[min(len(lat) - 1, int(p * len(lat)))] * 1000:.1f} ms" if lat else "-"

    lines = [
        "",
        f"== sidecar demo: {total} requests in {elapsed:.1f}s ({total / max(elapsed, 1e-9):.0f}/s) ==",
        "outcomes:",
        *(f"  {status:<28} {count}" for status, count in sorted(tally.statuses.items())),
        f"latency through two sidecars and two apps: p50 {pct(0.5)}, p99 {pct(0.99)}",
        "orders replicas (least_request balancing):",
        *(f"  {replica:<28} {count}" for replica, count in sorted(tally.replicas.items())),
    ]
    if tally.example:
        lines += [
            "one request's path:",
            "  demo client -> frontend sidecar (inbound) -> frontend app",
            "  frontend app -> frontend sidecar (outbound) -> orders sidecar (inbound) -> orders app",
            f"  orders app saw x-forwarded-for: {tally.example.get('x-forwarded-for')}",
            f"  and x-forwarded-client-cert: {tally.example.get('x-forwarded-client-cert')}",
            f"  and x-request-id: {tally.example.get('x-request-id')} (same id at every hop)",
            *trace,
        ]
    lines += ["where to look next:"]
    for node in demo.nodes:
        lines.append(f"  {node.name:<10} http://127.0.0.1:{node.admin}/ready   /live")
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
        demo.example("orders", port, "--name", f"orders-{i}")
        orders_nodes.append(demo.sidecar(f"orders-{i}", port, []))
    frontend_port = _free_port()
    orders_service = {
        "name": "orders",
        "endpoints": [{"address": f"127.0.0.1:{n.inbound}"} for n in orders_nodes],
        "load_balancer": "least_request",
        "timeouts": {"connect": "500ms", "request": "5s"},
        "tls": {"mode": "mutual", "identity": spiffe_id("orders")},
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
        async with trio.open_nursery() as nursery:
            for _ in range(CLIENTS):
                nursery.start_soon(_traffic, client, url, tally, demo.traces)
            if duration is not None:
                await trio.sleep(duration)
                nursery.cancel_scope.cancel()
                tally.stopped = time.monotonic()
            else:
                while True:
                    await trio.sleep(REPORT_EVERY)
                    print(_summary(tally, demo, frontend, await _trace_section(tally, demo)), flush=True)
        print(_summary(tally, demo, frontend, await _trace_section(tally, demo)), flush=True)


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
