"""sidecar.telemetry.otlp: our OTLP protobuf encoding decodes (with opentelemetry-proto) to exactly
what the official encoder produces for the same SDK spans, for every kind of span content; and the
exporter's header parsing."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from sidecar.telemetry.otlp import encode_spans, parse_headers


def finished_spans() -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "orders", "k8s.pod": "p-1"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("sidecar", "1.2.3")
    other = provider.get_tracer("other")
    remote = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value"), ("b", "2")]),
    )
    parent = set_span_in_context(NonRecordingSpan(remote))
    server = tracer.start_span(
        "GET",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "url.path": "/ünïcode", "server.port": 8080, "big": -(2**40)},
    )
    server.set_attribute("ratio", 0.25)
    server.set_attribute("flag", True)
    server.set_attribute("list", ["a", "b"])
    server.set_attribute("ints", [1, 2, 3])
    server.add_event("retry", {"attempt": 2})
    server.set_status(Status(StatusCode.ERROR, "upstream_timeout"))
    server.end()
    child = tracer.start_span("POST", context=set_span_in_context(server), kind=SpanKind.CLIENT)
    child.set_status(Status(StatusCode.OK))
    child.end()
    linked = other.start_span("internal", links=[Link(remote, {"why": "batch"})])
    linked.end()
    root = tracer.start_span("PUT", kind=SpanKind.PRODUCER)
    root.end()
    return list(memory.get_finished_spans())


def decoded(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def test_our_encoding_decodes_to_what_the_official_encoder_gives() -> None:
    spans = finished_spans()
    ours = decoded(encode_spans(spans))
    official = decoded(official_encode(spans).SerializePartialToString())
    linked = next(span for scope in ours.resource_spans[0].scope_spans for span in scope.spans if span.links)
    assert linked.links[0].trace_state == "vendor=value,b=2"  # a field the official encoder leaves out
    linked.links[0].ClearField("trace_state")
    assert ours == official
    assert len(ours.resource_spans[0].scope_spans) == 2  # two tracers: two scopes under one resource
    assert sum(len(s.spans) for s in ours.resource_spans[0].scope_spans) == 4


def test_an_empty_batch_is_an_empty_request() -> None:
    assert encode_spans([]) == b""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("api-key=secret", {"api-key": "secret"}),
        ("A=1, b = two%20words ,bad,=x", {"a": "1", "b": "two words"}),
    ],
)
def test_exporter_headers_from_the_environment_format(text: str | None, expected: dict[str, str]) -> None:
    assert parse_headers(text) == expected
