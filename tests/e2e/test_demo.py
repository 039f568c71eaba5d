"""`sidecar demo` (SPEC §9) and its trace receiver against real sidecars: the spans two sidecars
export land in the demo's receiver as one tree, and `sidecar demo --duration N` prints the trace tree
of one request across the mesh (frontend's SERVER and CLIENT spans, orders' SERVER span under the
CLIENT one), and, after killing orders-2's app at a third of the run, a resilience section with
retries, orders-2 ejected, 503 overflow answers of the breaker burst and success after the fault."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import httpx
import pytest

from sidecar.demo_traces import TraceReceiver, render_tree

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
    overflows = re.search(r"^  breaker: +(\d+) answers 503 overflow", text, re.M)
    assert overflows and int(overflows.group(1)) > 0, out
    after = re.search(r"after it (\d+) of (\d+) ", text)
    assert after and int(after.group(2)) > 0 and int(after.group(1)) >= 0.9 * int(after.group(2)), out
