"""`sidecar demo` and its trace receiver against real sidecars: the spans two sidecars
export land in the demo's receiver as one tree, and `sidecar demo --duration N` prints the trace tree
of one request across the mesh (frontend's SERVER and CLIENT spans, orders' SERVER span under the
CLIENT one), and, after killing orders-2's app at a third of the run, a resilience section with
retries, orders-2 ejected, the 503 overflow answers of the breaker (the burst's apart from the
steady clients', added up), success after the fault with its failures by cause, the tree of a
request whose try failed on orders-2 and was retried on orders-1, and no URL of a process that
has exited."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import httpx
import pytest

from sidecar.demo import OVERFLOW, Tally, _failed_then_retried, _failures_after
from sidecar.demo_traces import SpanRecord, TraceReceiver, render_tree

from .conftest import REPO, Mesh, mesh_service

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(autouse=True)
def fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # ms between batches (5 s by default)


async def test_sidecars_export_one_tree_to_the_demo_receiver(mesh: Mesh) -> None:
    receiver = TraceReceiver()
    port = await mesh.nursery.start(receiver.serve)
    tracing = {"exporter": "otlp", "endpoint": f"http://127.0.0.1:{port}", "sample_ratio": 1.0}
    orders = await mesh.sidecar(service="orders", inbound_app=await mesh.origin(), tracing=tracing)
    frontend = await mesh.sidecar(service="frontend", services=[mesh_service("orders", orders)], tracing=tracing)
    async with httpx.AsyncClient(base_url=frontend.outbound_url) as client:
        for _ in range(2):  # the second export reuses the exporter's kept-alive connection
            traceparent = f"00-{TRACE}-00f067aa0ba902b7-01"
            r = await client.get("/orders/42", headers={"host": "orders", "traceparent": traceparent})
            assert r.status_code == 200
    spans = await receiver.wait_for_trace(TRACE, lambda spans: len(spans) == 4, timeout=10)
    assert len(spans) == 4
    names = {f"127.0.0.1:{orders.inbound}": "orders-1"}
    lines = render_tree(spans, names)
    assert [line.split()[:2] for line in lines] == [["frontend", "CLIENT"], ["orders", "SERVER"]] * 2
    assert "-> orders-1" in lines[0] and " 200 " in lines[1]


def test_demo_kills_a_replica_and_prints_resilience_and_the_trace_tree(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the demo's throwaway mesh goes under tmp_path
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--duration", "4"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    _, found, summary = out.partition("\n== sidecar demo: ")
    assert found, out
    assert "http://" not in summary and "https://" not in summary, out  # its processes have exited
    assert re.search(r"^the mesh stops with the demo; its configs and logs stay in \S+$", summary, re.M), out
    _, found, rest = out.partition("its trace, as the sidecars exported it (trace id ")
    assert found, out
    tree = list(takewhile(lambda line: line.startswith("  "), rest.splitlines()[1:]))
    assert re.match(r"  frontend +SERVER GET /checkout +200 ", tree[0]), out
    client = next(i for i, line in enumerate(tree) if re.match(r"    frontend +CLIENT GET /orders/42 +200 ", line))
    assert re.search(r"-> orders-[12]$", tree[client]), out
    assert re.match(r"      orders +SERVER GET /orders/42 +200 ", tree[client + 1]), out
    assert "no spans from" not in out
    # The fault, and what frontend's sidecar did about it.
    assert re.search(r"^fault: orders-2's app \(pid \d+\) killed at 1\.\d s$", out, re.M), out
    _, found, rest = out.partition("resilience (frontend sidecar's /metrics and /clusters, service orders):")
    assert found, out
    section = list(takewhile(lambda line: line.startswith("  "), rest.splitlines()[1:]))
    text = "\n".join(section)
    retries = re.search(r"^  retries: +(\d+) ", text, re.M)
    assert retries and int(retries.group(1)) > 0, out
    ejections = re.search(r"^  ejections: +(\d+) ", text, re.M)
    assert ejections and int(ejections.group(1)) >= 1, out
    assert re.search(r"^    orders-2 +127\.0\.0\.1:\d+ +EJECTED ", text, re.M), out
    assert re.search(r"^    orders-1 +127\.0\.0\.1:\d+ +healthy ", text, re.M), out
    overflows = re.search(
        r"^  breaker: +(\d+) answers 503 overflow: (\d+) to the burst, (\d+) to the steady clients ", text, re.M
    )
    assert overflows, out
    total, burst, steady = (int(n) for n in overflows.groups())
    assert burst > 0 and total == burst + steady, out
    in_burst = re.search(r"^    burst of 24 concurrent requests: .*?(\d+) x 503 overflow", text, re.M)
    assert in_burst and int(in_burst.group(1)) == burst, out
    outcome = re.search(r"^  503 overflow +(\d+)$", out, re.M)  # the steady clients' outcomes
    assert int(outcome.group(1) if outcome else 0) == steady, out
    after = re.search(r"after it (\d+) of (\d+) ", text)
    assert after and int(after.group(2)) > 0 and int(after.group(1)) >= 0.9 * int(after.group(2)), out
    # The steady clients' failures after the fault, by cause: the breaker's, and any other.
    failed = int(after.group(2)) - int(after.group(1))
    breaker = re.search(r"^ +after the fault: (\d+) x 503 overflow, from the breaker the burst filled;$", text, re.M)
    by_breaker = int(breaker.group(1)) if breaker else 0
    otherwise = re.search(r"^ +(?:after the fault: )?failed otherwise: (.*)$", text, re.M)
    by_other = sum(int(n) for n in re.findall(r"(\d+) x ", otherwise.group(1))) if otherwise else 0
    assert by_breaker <= steady and by_breaker + by_other == failed, out
    assert (by_other == 0) == bool(re.search(r"^ +(after the fault: )?none failed because of orders-2: ", text, re.M))
    # A request whose try failed on orders-2, retried on orders-1.
    _, found, rest = out.partition("the trace of a request retried after the fault (trace id ")
    assert found, out
    retried = list(takewhile(lambda line: line.startswith("  "), rest.splitlines()[1:]))
    assert retried[:2] == [
        "  its first try reached orders-2, whose sidecar answered 502 (its app is gone);",
        "  frontend's sidecar sent it again, to orders-1, which answered 200",
    ], out
    assert re.match(r"  frontend +SERVER GET /checkout +200 ", retried[2]), out
    assert re.match(r"    frontend +CLIENT GET /orders/42 +502 .* -> orders-2  error=502$", retried[3]), out
    # Refused at connect once the app is gone; reset if the kill caught that request in flight.
    killed = r"      orders +SERVER GET /orders/42 +502 .* reason=upstream_(connect_failure|reset)$"
    assert re.match(killed, retried[4]), out
    assert re.match(r"    frontend +CLIENT GET /orders/42 +200 .* -> orders-1  retry=1$", retried[5]), out
    assert re.match(r"      orders +SERVER GET /orders/42 +200 ", retried[6]), out


def span(span_id: str, parent: str, kind: str, **attributes: object) -> SpanRecord:
    return SpanRecord(TRACE, span_id, parent, "GET", kind, "frontend", 0, 1, dict(attributes))


def test_the_retried_trace_shown_is_one_whose_try_failed_on_orders_2_and_whose_retry_worked() -> None:
    names = {"a:1": "orders-1", "a:2": "orders-2"}
    failed = span("b1", "a1", "CLIENT", **{"mesh.upstream.address": "a:2", "http.response.status_code": 502})
    retry = {"mesh.upstream.address": "a:1", "http.request.resend_count": 1, "http.response.status_code": 200}
    assert _failed_then_retried([failed, span("b2", "a1", "CLIENT", **retry)], names) == "orders-1"
    assert _failed_then_retried([span("b2", "a1", "CLIENT", **retry)], names) is None  # no failed try on orders-2
    retry_failed = {**retry, "http.response.status_code": 503}
    assert _failed_then_retried([failed, span("b2", "a1", "CLIENT", **retry_failed)], names) is None


def test_failures_after_the_fault_keep_the_breaker_apart_from_the_dead_replica() -> None:
    tally = Tally()
    tally.record("200", 0.01, "orders-1")
    tally.record(OVERFLOW, 0.01, None)  # before the fault: not counted after it
    tally.fault_at = 1.0
    tally.record(OVERFLOW, 0.01, None)
    tally.record("200", 0.01, "orders-1")
    assert (tally.before, tally.after) == ([1, 2], [1, 2])
    assert _failures_after(tally) == [
        "1 x 503 overflow, from the breaker the burst filled;",
        "none failed because of orders-2: its failed tries were retried on the other replica",
    ]
    tally.record("502 upstream_connect_failure", 0.01, None)
    assert _failures_after(tally) == [
        "1 x 503 overflow, from the breaker the burst filled;",
        "failed otherwise: 1 x 502 upstream_connect_failure",
    ]
