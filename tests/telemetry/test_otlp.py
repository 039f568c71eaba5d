"""sidecar.telemetry.otlp: our OTLP protobuf encoding of span records decodes (with
opentelemetry-proto) to exactly what the official encoder produces for the same spans built as the
SDK's ReadableSpans; and the exporter's header parsing."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from sidecar.telemetry.otlp import SCOPE_NAME, encode_spans, parse_headers
from sidecar.telemetry.span import CLIENT, SERVER, Parent, Span

RESOURCE = {"service.name": "orders", "k8s.pod.name": "orders-1", "telemetry.sdk.language": "python"}
KINDS = {SERVER: SpanKind.SERVER, CLIENT: SpanKind.CLIENT}


def spans() -> list[Span]:
    remote = Parent(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1, "vendor=value,b=2")
    attributes: dict[str, Any] = {"http.request.method": "GET", "url.path": "/ünïcode", "big": -(2**40)}
    server = Span(remote.trace_id, 0x1111, remote, 1, "GET", SERVER, 1_000, attributes, None)
    server.attributes.update({"ratio": 0.25, "flag": True, "list": ["a", "b"], "http.response.status_code": 503})
    server.set_error("503")
    server.end_ns = 5_000
    client = Span(0xABC, 0x2222, None, 1, "POST", CLIENT, 2_000, {"mesh.service": "orders"}, None)
    client.end_ns = 3_000
    same_attributes = Span(0xABC, 0x3333, None, 1, "POST", CLIENT, 2_000, {"mesh.service": "orders"}, None)
    same_attributes.end_ns = 4_000
    return [server, client, same_attributes]


def as_sdk(span: Span) -> ReadableSpan:
    parent = None
    if span.parent_id:
        parent = SpanContext(span.trace_id, span.parent_id, is_remote=span.parent_remote, trace_flags=TraceFlags(1))
    state = TraceState.from_header([span.trace_state]) if span.trace_state else None
    return ReadableSpan(
        span.name,
        context=SpanContext(span.trace_id, span.span_id, is_remote=False, trace_flags=TraceFlags(1), trace_state=state),
        parent=parent,
        resource=Resource(RESOURCE),
        attributes=span.attributes,
        kind=KINDS[span.kind],
        status=Status(StatusCode.ERROR if span.status else StatusCode.UNSET),
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=InstrumentationScope(SCOPE_NAME, ""),
    )


def decoded(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def test_our_encoding_decodes_to_what_the_official_encoder_gives() -> None:
    records = spans()
    for _ in range(2):  # the second time every attribute pair comes from the cache
        ours = decoded(encode_spans(records, RESOURCE))
        official = decoded(official_encode([as_sdk(span) for span in records]).SerializePartialToString())
        assert ours == official
    (resource_spans,) = ours.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "sidecar" and len(scope_spans.spans) == 3
    assert scope_spans.spans[0].trace_state == "vendor=value,b=2"
    assert scope_spans.spans[0].parent_span_id == bytes.fromhex("00f067aa0ba902b7")


def test_an_empty_batch_is_an_empty_request() -> None:
    assert encode_spans([], RESOURCE) == b""


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


def test_a_large_batch_is_encoded_in_slices_with_a_pause_between_them() -> None:
    records = [
        Span(0xABC, number + 1, None, 1, "GET", CLIENT, number, {"mesh.service": "orders"}, None)
        for number in range(70)
    ]
    pauses: list[int] = []
    sliced = encode_spans(records, RESOURCE, pause=lambda: pauses.append(1))
    assert sliced == encode_spans(records, RESOURCE)
    assert len(pauses) == 3  # 32 + 32 + 6
