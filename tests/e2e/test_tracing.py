"""Traces across the mesh, received by a real OTLP/HTTP endpoint (decoded with opentelemetry-proto):
app A -> sidecar A (CLIENT span per try) -> sidecar B (SERVER span) -> app B is one trace with the
right parentage and attributes; sampling 0 and 1; retries as sibling CLIENT spans; and a collector
that is dead or hangs never holds a request up."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from .conftest import Mesh, SidecarHandle, mesh_service, service, spiffe_id
from .otlp import OtlpReceiver, ReceivedSpan
from .test_resilience import FlakyOrigin

APP_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # ms between batches (5 s by default)


def tracing(port: int, ratio: float = 1.0) -> dict[str, Any]:
    return {"exporter": "otlp", "endpoint": f"http://127.0.0.1:{port}", "sample_ratio": ratio}


async def two_sidecars(mesh: Mesh, collector: int, ratio: float = 1.0) -> tuple[SidecarHandle, SidecarHandle]:
    b = await mesh.sidecar(service="orders", inbound_app=await mesh.origin(), tracing=tracing(collector, ratio))
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b)], tracing=tracing(collector, ratio))
    return a, b


def header(response: httpx.Response, name: str) -> str:
    """The one `name` field the app received (the /info route lists its request headers)."""
    (value,) = [v for k, v in response.json()["headers"] if k == name]
    return value


def by_kind(spans: list[ReceivedSpan], kind: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == kind]


async def test_one_trace_across_two_sidecars_with_parentage_and_attributes(mesh: Mesh) -> None:
    receiver = OtlpReceiver()
    a, _ = await two_sidecars(mesh, await mesh.origin(receiver))
    traceparent = f"00-{APP_TRACE}-{APP_SPAN}-01"
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:
        r = await client.get("/info?q=1", headers={"host": "orders", "traceparent": traceparent})
    assert r.status_code == 200
    spans = await receiver.wait_for(2)
    (client_span,) = by_kind(spans, "CLIENT")
    (server_span,) = by_kind(spans, "SERVER")
    assert client_span.trace_id == server_span.trace_id == APP_TRACE  # one trace, the app's
    assert client_span.parent_span_id == APP_SPAN  # sidecar A's span is a child of app A's
    assert server_span.parent_span_id == client_span.span_id  # sidecar B's of sidecar A's
    received = header(r, "traceparent")
    assert received == f"00-{APP_TRACE}-{server_span.span_id}-01"  # app B's parent is sidecar B's span

    assert client_span.service == "frontend" and server_span.service == "orders"
    assert client_span.name == server_span.name == "GET"
    for span in (client_span, server_span):
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["url.path"] == "/info"
        assert span.attributes["server.address"] == "orders"
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["network.protocol.version"] in ("1.1", "2")
        assert span.attributes["mesh.service"] == "orders"
        assert span.status == "UNSET" and "error.type" not in span.attributes
    assert client_span.attributes["mesh.upstream.address"].startswith("127.0.0.1:")
    assert client_span.attributes["mesh.peer.identity"] == spiffe_id("orders")
    assert server_span.attributes["mesh.peer.identity"] == spiffe_id("frontend")  # who called B


async def test_a_request_without_trace_context_starts_a_trace(mesh: Mesh) -> None:
    receiver = OtlpReceiver()
    a, _ = await two_sidecars(mesh, await mesh.origin(receiver))
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:
        r = await client.get("/info", headers={"host": "orders"})
    spans = await receiver.wait_for(2)
    (client_span,) = by_kind(spans, "CLIENT")
    (server_span,) = by_kind(spans, "SERVER")
    assert client_span.parent_span_id == ""  # a root span
    assert server_span.trace_id == client_span.trace_id and server_span.parent_span_id == client_span.span_id
    received = header(r, "traceparent")
    assert received[:-3] == f"00-{client_span.trace_id}-{server_span.span_id}"
    assert int(received[-2:], 16) & 1  # sampled (the SDK may also set the W3C level 2 "random" flag)


async def test_sample_ratio_zero_exports_nothing_but_still_propagates(mesh: Mesh) -> None:
    receiver = OtlpReceiver()
    a, _ = await two_sidecars(mesh, await mesh.origin(receiver), ratio=0.0)
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:
        for _ in range(20):
            r = await client.get("/info", headers={"host": "orders"})
            assert r.status_code == 200
    version, trace_id, span_id, flags = header(r, "traceparent").split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    assert int(flags, 16) & 1 == 0  # not sampled
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:  # a caller's "sampled" is followed
        await client.get("/info", headers={"host": "orders", "traceparent": f"00-{APP_TRACE}-{APP_SPAN}-01"})
    await receiver.wait_for(2)
    await trio.sleep(0.3)  # any span of the 20 unsampled requests would have been exported by now
    assert {s.trace_id for s in receiver.spans} == {APP_TRACE}


async def retried_once(mesh: Mesh, headers: dict[str, str]) -> tuple[list[ReceivedSpan], FlakyOrigin]:
    """One GET through a sidecar to an origin that fails its first request (503), so it is retried
    once; the spans the sidecar exported."""
    receiver = OtlpReceiver()
    origin = FlakyOrigin(failures=1)
    sc = await mesh.sidecar(
        services=[service("orders", await mesh.origin(origin))], tracing=tracing(await mesh.origin(receiver))
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:
        assert (await client.get("/x", headers={"host": "orders", **headers})).status_code == 200
    return await receiver.wait_for(2), origin


async def test_each_retry_is_its_own_client_span_with_a_resend_count(mesh: Mesh) -> None:
    spans, origin = await retried_once(mesh, {"traceparent": f"00-{APP_TRACE}-{APP_SPAN}-01"})
    first, second = sorted(by_kind(spans, "CLIENT"), key=lambda s: s.attributes.get("http.request.resend_count", 0))
    assert first.parent_span_id == second.parent_span_id == APP_SPAN  # siblings under the app's span
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert first.attributes["http.response.status_code"] == 503 and first.status == "ERROR"
    assert first.attributes["error.type"] == "503"
    assert second.attributes["http.response.status_code"] == 200 and second.status == "UNSET"
    assert [attempt for _, attempt, _ in origin.seen] == ["1", "2"]


async def test_a_reply_the_sidecar_makes_carries_its_reason(mesh: Mesh) -> None:
    receiver = OtlpReceiver()
    sc = await mesh.sidecar(
        services=[service("orders", 1, retries={"attempts": 0})],  # port 1: connection refused
        tracing=tracing(await mesh.origin(receiver)),
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:
        r = await client.get("/x", headers={"host": "orders"})
        unrouted = await client.get("/x", headers={"host": "nowhere"})
    assert r.status_code == 502 and unrouted.status_code == 404
    spans = await receiver.wait_for(2)
    failed = next(s for s in spans if s.attributes.get("mesh.service") == "orders")
    assert failed.kind == "CLIENT" and failed.status == "ERROR"
    assert failed.attributes["error.type"] == failed.attributes["mesh.reason"] == "upstream_connect_failure"
    no_route = next(s for s in spans if s is not failed)
    assert no_route.kind == "CLIENT" and no_route.attributes["mesh.reason"] == "no_route"
    assert no_route.attributes["http.response.status_code"] == 404


@pytest.mark.parametrize("collector", ["closed", "hanging"])
async def test_a_dead_or_hanging_collector_never_holds_a_request_up(
    mesh: Mesh, collector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import free_port

    # Seconds the exporter keeps retrying a batch: a dead collector's spans are dropped after 1 s; a
    # hanging one holds its export for longer than the requests below take, however slow the machine.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1" if collector == "closed" else "30")

    hanging = OtlpReceiver(hang=True)
    port = free_port() if collector == "closed" else await mesh.origin(hanging)
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())], tracing=tracing(port))
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:
        if collector == "hanging":
            await client.get("/info", headers={"host": "orders"})
            with trio.fail_after(5):
                await hanging.arrived.wait()  # an export is now stuck in the collector
        statuses = []
        for _ in range(300):  # more spans than one batch, while the export hangs or fails
            statuses.append((await client.get("/info", headers={"host": "orders"})).status_code)
    assert statuses == [200] * 300
    if collector == "closed":
        with trio.fail_after(10):
            while sc.runtime.metrics.spans_dropped == 0:  # the failed exports' spans are counted
                await trio.sleep(0.05)
    else:
        assert hanging.exports == 1  # still stuck on the first export: nothing waited on it


async def test_retries_of_a_request_without_trace_context_share_one_trace(mesh: Mesh) -> None:
    (first, second), _ = await retried_once(mesh, {})
    assert first.trace_id == second.trace_id and first.span_id != second.span_id
    assert first.parent_span_id == second.parent_span_id == ""  # roots of the one trace
