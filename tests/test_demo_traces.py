"""The demo's trace receiver and tree (sidecar/demo_traces.py): the tree drawn from span records,
what the receiver keeps and pins, and the receiver over real HTTP (httpx and a raw connection) fed
ExportTraceServiceRequests built with opentelemetry-proto."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.demo_traces import MATCHED_TRACE_LIMIT, SpanRecord, TraceReceiver, render_tree

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "f" * 32
MS = 1_000_000
ORDERS_1 = "127.0.0.1:7000"
ORDERS_2 = "127.0.0.1:7001"


def record(
    span_id: str,
    parent: str,
    service: str,
    kind: str,
    start_ms: float,
    end_ms: float,
    attributes: dict[str, Any] | None = None,
    trace_id: str = TRACE,
) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name="GET",
        kind=kind,
        service=service,
        start_ns=int(start_ms * MS),
        end_ns=int(end_ms * MS),
        attributes=attributes or {},
    )


def ok(path: str, **more: Any) -> dict[str, Any]:
    return {"url.path": path, "http.response.status_code": 200, **more}


def checkout_trace() -> list[SpanRecord]:
    """frontend SERVER (its parent, the demo client's span, not collected); frontend's CLIENT span;
    orders' SERVER span. Given out of order: the tree does not depend on arrival."""
    return [
        record("c3", "b2", "orders", "SERVER", 3, 5, ok("/orders/42")),
        record("b2", "a1", "frontend", "CLIENT", 2, 6.3, ok("/orders/42", **{"mesh.upstream.address": ORDERS_2})),
        record("a1", "ff00", "frontend", "SERVER", 1, 10.5, ok("/checkout")),
    ]


def test_tree_puts_children_under_parents_and_an_uncollected_parent_makes_a_root() -> None:
    assert render_tree(checkout_trace(), {ORDERS_2: "orders-2"}) == [
        "frontend    SERVER GET /checkout   200  9.5 ms",
        "  frontend  CLIENT GET /orders/42  200  4.3 ms  -> orders-2",
        "    orders  SERVER GET /orders/42  200  2.0 ms",
    ]


def test_tree_shows_reasons_errors_missing_status_and_unnamed_upstreams() -> None:
    failed_try = {
        "http.response.status_code": 503,
        "mesh.reason": "upstream_connect_error",
        "error.type": "upstream_connect_error",
        "mesh.upstream.address": "10.0.0.9:80",
    }
    spans = [
        record("a1", "", "frontend", "SERVER", 0, 13, {"http.response.status_code": 503, "error.type": "503"}),
        record("b1", "a1", "frontend", "CLIENT", 1, 2, failed_try),
        record("b0", "a1", "frontend", "CLIENT", 0.5, 1, {"mesh.reason": "no_healthy_upstream"}),
    ]
    lines = render_tree(spans)
    assert lines[0].endswith("503  13.0 ms  error=503")
    # siblings by start time; the reason once when error.type repeats it; no status shows as "-"
    assert "CLIENT GET" in lines[1] and lines[1].endswith("  -   0.5 ms  reason=no_healthy_upstream")
    assert lines[2].endswith("503   1.0 ms  -> 10.0.0.9:80  reason=upstream_connect_error")
    assert all(line.startswith("  frontend") for line in lines[1:])


def test_tree_marks_a_retried_try() -> None:
    first = {"http.response.status_code": 502, "error.type": "502", "mesh.upstream.address": ORDERS_2}
    retry = {"http.response.status_code": 200, "mesh.upstream.address": ORDERS_1, "http.request.resend_count": 1}
    spans = [
        record("a1", "", "frontend", "SERVER", 0, 20, ok("/checkout")),
        record("b1", "a1", "frontend", "CLIENT", 1, 4, {"url.path": "/orders/42", **first}),
        record("b2", "a1", "frontend", "CLIENT", 5, 9, {"url.path": "/orders/42", **retry}),
    ]
    lines = render_tree(spans, {ORDERS_2: "orders-2", ORDERS_1: "orders-1"})
    assert lines[1].endswith("502   3.0 ms  -> orders-2  error=502")
    assert lines[2].endswith("200   4.0 ms  -> orders-1  retry=1")


def test_tree_of_separate_roots_and_odd_parentage() -> None:
    spans = [
        record("b1", "99", "orders", "SERVER", 5, 6),  # its parent never arrived
        record("a1", "", "frontend", "SERVER", 1, 2),
        record("c1", "c1", "orders", "SERVER", 7, 8),  # names itself as parent
    ]
    lines = render_tree(spans)
    assert [line.split()[0] for line in lines] == ["frontend", "orders", "orders"]
    assert not any(line.startswith(" ") for line in lines)
    assert render_tree([]) == []


def test_receiver_keeps_the_last_spans_and_every_span_of_a_pinned_trace() -> None:
    receiver = TraceReceiver(limit=3)
    spans = [record(f"{i:016x}", "", "s", "SERVER", i, i + 1, trace_id=f"{i:032x}") for i in range(6)]
    receiver.keep(spans[:2])
    receiver.pin(spans[1].trace_id)  # already here: it stays
    receiver.pin(OTHER)  # not here yet: its spans will stay
    receiver.keep(spans[2:])
    pinned = [record(f"{i:016x}", "", "orders", "SERVER", i, i + 1, trace_id=OTHER) for i in range(5)]
    receiver.keep(pinned)
    assert receiver.trace(spans[1].trace_id) == [spans[1]]
    assert receiver.trace(OTHER) == pinned  # past the limit of 3
    unpinned = [s for s in receiver.spans if s.service == "s" and s.trace_id != spans[1].trace_id]
    assert unpinned == spans[3:]  # the last 3
    assert receiver.trace(spans[0].trace_id) == []
    assert receiver.received == 11


def test_receiver_pins_the_first_traces_a_span_of_which_matches() -> None:
    receiver = TraceReceiver(limit=2, keep_traces_with=lambda span: span.kind == "CLIENT")
    early = record("a1", "", "frontend", "SERVER", 0, 1, trace_id=OTHER)  # before its matching span
    receiver.keep([early])
    receiver.keep([record("b1", "a1", "frontend", "CLIENT", 1, 2, trace_id=OTHER)])
    traces = [f"{i:032x}" for i in range(1, MATCHED_TRACE_LIMIT + 2)]
    receiver.keep([record(f"{i:016x}", "", "s", "CLIENT", i, i + 1, trace_id=t) for i, t in enumerate(traces)])
    receiver.keep([record(f"{i:016x}", "", "s", "SERVER", i, i + 1) for i in range(5)])  # unpinned, past the limit
    assert receiver.matched == [OTHER, *traces[: MATCHED_TRACE_LIMIT - 1]]
    assert [s.span_id for s in receiver.trace(OTHER)] == ["a1", "b1"]  # the span that came first is kept too
    assert all(len(receiver.trace(t)) == 1 for t in receiver.matched[1:])
    assert receiver.trace(traces[-1]) == []  # past MATCHED_TRACE_LIMIT: not pinned, then pushed out
    assert len(receiver.trace(TRACE)) == 2


async def test_wait_for_trace_returns_once_complete_or_at_the_timeout() -> None:
    receiver = TraceReceiver()
    spans = checkout_trace()

    async def arrive() -> None:
        for span in spans:
            await trio.sleep(0.01)
            receiver.keep([span])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrive)
        got = await receiver.wait_for_trace(TRACE, lambda s: len(s) == 3, timeout=5)
    assert sorted(s.span_id for s in got) == ["a1", "b2", "c3"]
    with trio.fail_after(1):
        assert len(await receiver.wait_for_trace(TRACE, lambda s: len(s) == 4, timeout=0.05)) == 3


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, list):
        return KeyValue(
            key=key, value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value]))
        )
    return KeyValue(key=key, value=AnyValue(int_value=value))


def export(service: str, *spans: Span) -> bytes:
    resource = Resource(attributes=[_kv("service.name", service)])
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])]
    )
    return request.SerializeToString()


def span(span_id: str, parent: str, kind: int, **attributes: Any) -> Span:
    return Span(
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex(span_id),
        parent_span_id=bytes.fromhex(parent),
        name="GET",
        kind=kind,
        start_time_unix_nano=1_000 * MS,
        end_time_unix_nano=1_003 * MS,
        attributes=[_kv(k, v) for k, v in attributes.items()],
    )


PROTOBUF = {"content-type": "application/x-protobuf"}


async def test_receiver_over_http_keeps_exported_spans() -> None:
    receiver = TraceReceiver()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            frontend = export(
                "frontend",
                span("00000000000000a1", "", 2, **{"url.path": "/checkout", "http.response.status_code": 200}),
                span("00000000000000b2", "00000000000000a1", 3, **{"mesh.upstream.address": "127.0.0.1:7001"}),
            )
            r = await client.post("/v1/traces", content=frontend, headers=PROTOBUF)
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-protobuf"
            ExportTraceServiceResponse().ParseFromString(r.content)  # an empty, valid answer
            orders = export("orders", span("00000000000000c3", "00000000000000b2", 2, tags=["a", "b"]))
            r = await client.post(
                "/v1/traces", content=gzip.compress(orders), headers={**PROTOBUF, "content-encoding": "gzip"}
            )
            assert r.status_code == 200
            assert (await client.post("/v1/logs", content=orders, headers=PROTOBUF)).status_code == 404
            assert (await client.get("/v1/traces")).status_code == 405
            assert (await client.post("/v1/traces", json={})).status_code == 415
            assert (await client.post("/v1/traces", content=b"\xff\xff", headers=PROTOBUF)).status_code == 400
        nursery.cancel_scope.cancel()
    assert receiver.exports == 2
    kept = {s.span_id: s for s in receiver.trace(TRACE)}
    assert set(kept) == {"00000000000000a1", "00000000000000b2", "00000000000000c3"}
    root, client_span, server = kept["00000000000000a1"], kept["00000000000000b2"], kept["00000000000000c3"]
    assert (root.service, root.kind, root.parent_span_id) == ("frontend", "SERVER", "")
    assert root.attributes == {"url.path": "/checkout", "http.response.status_code": 200}
    assert root.duration_ms == 3.0
    assert (client_span.service, client_span.kind, client_span.parent_span_id) == (
        "frontend",
        "CLIENT",
        "00000000000000a1",
    )
    assert (server.service, server.kind, server.parent_span_id) == ("orders", "SERVER", "00000000000000b2")
    assert server.attributes == {"tags": ["a", "b"]}
    assert [line.split()[:2] for line in render_tree(receiver.trace(TRACE))] == [
        ["frontend", "SERVER"],
        ["frontend", "CLIENT"],
        ["orders", "SERVER"],
    ]


async def test_receiver_keeps_a_connection_alive_across_requests_and_chunked_bodies() -> None:
    receiver = TraceReceiver()
    body = export("orders", span("00000000000000c3", "", 2))
    chunked = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:5], body[5:])) + b"0\r\n\r\n"
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        requests = (
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
            + b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n"
            + b"transfer-encoding: chunked\r\n\r\n"
            + chunked
        )
        await stream.send_all(requests)  # two requests at once, on one connection
        answers = b""
        with trio.fail_after(5):
            while answers.count(b"HTTP/1.1 ") < 2 or not answers.endswith(b"content-length: 0\r\n\r\n"):
                answers += await stream.receive_some()
        assert answers.startswith(b"HTTP/1.1 404 ")
        assert b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n" in answers
        await stream.send_all(b"POST /v1/traces HTTP/1.1\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx")
        with trio.fail_after(5):
            rest = b""
            while data := await stream.receive_some():  # answered, then closed by the receiver
                rest += data
        assert rest.startswith(b"HTTP/1.1 415 ") and b"connection: close" in rest
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert [s.span_id for s in receiver.spans] == ["00000000000000c3"]
