"""sidecar.telemetry.span and tracing's sampling, batching and dropping: W3C traceparent parsing
(examples and hypothesis), parent-based ratio sampling, the bounded queue, and the worker thread
sending batches through a scripted exporter."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.telemetry.span import CLIENT, SERVER, Parent, Span, format_traceparent, parse_traceparent
from sidecar.telemetry.tracing import Tracing, TracingSettings

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_and_its_tracestate() -> None:
    parent = parse_traceparent(VALID, b" vendor=value ")
    assert parent is not None
    assert (parent.trace_id, parent.span_id, parent.flags) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, 1)
    assert parent.sampled and parent.trace_state == "vendor=value"
    assert format_traceparent(parent.trace_id, parent.span_id, parent.flags) == VALID


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        VALID.upper(),  # hex must be lower-case
        VALID[:-1],
        VALID + b"-extra",  # version 00 has exactly four fields
        b"ff" + VALID[2:],  # version ff is invalid
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    ],
)
def test_invalid_traceparents_are_ignored(value: bytes | None) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_may_append_fields() -> None:
    parent = parse_traceparent(b"01" + VALID[2:] + b"-what-comes-next")
    assert parent is not None and parent.span_id == 0xF067AA0BA902B7


@given(st.binary(max_size=80))
def test_any_bytes_parse_or_are_ignored(value: bytes) -> None:
    parent = parse_traceparent(value)
    if parent is not None:
        assert 0 < parent.trace_id < 2**128 and 0 < parent.span_id < 2**64 and 0 <= parent.flags < 256


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.integers(0, 255))
def test_what_we_write_we_read_back(trace_id: int, span_id: int, flags: int) -> None:
    parent = parse_traceparent(format_traceparent(trace_id, span_id, flags))
    assert parent is not None and (parent.trace_id, parent.span_id, parent.flags) == (trace_id, span_id, flags)


class Sent:
    """A scripted exporter: records batches, fails while `failing`, can block until released."""

    def __init__(self) -> None:
        self.batches: list[list[Span]] = []
        self.failing = False
        self.gate = threading.Event()
        self.gate.set()
        self.arrived = threading.Event()

    def __call__(self, batch: list[Span]) -> bool:
        self.arrived.set()
        self.gate.wait(10)
        self.batches.append(batch)
        return not self.failing


def tracing(ratio: float = 1.0, **environ: str) -> tuple[Tracing, Sent]:
    settings = TracingSettings("otlp", "http://127.0.0.1:9/v1/traces", ratio)
    made = Tracing("orders", settings, {"OTEL_BSP_SCHEDULE_DELAY": "20", **environ})
    sent = Sent()
    made._export = sent
    return made, sent


def test_sampling_follows_the_parent_and_the_ratio_decides_new_traces() -> None:
    never, _ = tracing(0.0)
    always, _ = tracing(1.0)
    sampled = Parent(1, 2, 1, "")
    unsampled = Parent(1, 2, 0, "")
    assert not never.start("GET", SERVER, None, {}).sampled
    assert never.start("GET", SERVER, sampled, {}).sampled  # the caller's decision wins
    assert not always.start("GET", SERVER, unsampled, {}).sampled
    child = always.start("GET", CLIENT, sampled, {})
    assert child.sampled and child.trace_id == 1 and child.parent_id == 2 and child.span_id not in (0, 2)
    half, _ = tracing(0.5)
    share = sum(half.start("GET", SERVER, None, {}).sampled for _ in range(4000)) / 4000
    assert 0.45 < share < 0.55
    for made in (never, always, half):
        made.shutdown()


def test_ended_spans_are_sent_in_batches_and_resource_names_the_service() -> None:
    made, sent = tracing(OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10")
    assert made.resource["service.name"] == "orders"
    for number in range(25):
        made.start(f"GET {number}", SERVER, None, {}).end(number)
    made.start("never ended", SERVER, None, {})
    made.shutdown()
    names = [span.name for batch in sent.batches for span in batch]
    assert names == [f"GET {number}" for number in range(25)]
    assert max(len(batch) for batch in sent.batches) <= 10 and made.dropped == 0


def test_a_full_queue_and_a_failed_export_drop_spans_and_count_them() -> None:
    made, sent = tracing(OTEL_BSP_MAX_QUEUE_SIZE="5", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="5")
    sent.gate.clear()  # the collector hangs: the first batch is stuck in export
    for number in range(5):
        made.start("GET", SERVER, None, {}).end(number)
    assert sent.arrived.wait(5)
    for number in range(8):  # 5 fit in the queue again, 3 do not
        made.start("GET", SERVER, None, {}).end(number)
    assert made.dropped_in_queue == 3
    sent.failing = True
    sent.gate.set()
    made.shutdown()
    assert made.dropped == 3 + 10  # and both batches failed
    assert sum(len(batch) for batch in sent.batches) == 10


def test_an_unsampled_span_is_never_queued() -> None:
    made, sent = tracing(0.0)
    for number in range(100):
        made.start("GET", SERVER, None, {}).end(number)
    made.shutdown()
    assert sent.batches == [] and made.dropped == 0


def test_ending_twice_exports_once() -> None:
    made, sent = tracing()
    span = made.start("GET", SERVER, None, {})
    span.end(5)
    span.end(9)
    made.shutdown()
    assert [s.end_ns for batch in sent.batches for s in batch] == [5]


def test_a_retired_tracer_sends_what_it_has_then_counts_late_spans_as_dropped() -> None:
    made, sent = tracing()
    made.start("before", SERVER, None, {}).end(1)
    late = made.start("late", SERVER, None, {})
    made.retire()
    made._worker.join(5)
    assert not made._worker.is_alive()
    late.end(2)  # a request that began before the reload and ended after it
    assert [span.name for batch in sent.batches for span in batch] == ["before"]
    assert made.dropped == 1


def test_the_console_exporter_prints_each_span_as_a_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    made = Tracing("orders", TracingSettings("console", "unused", 1.0), {"OTEL_BSP_SCHEDULE_DELAY": "20"})
    span = made.start("GET", SERVER, None, {"url.path": "/x"})
    span.set_error("503")
    span.end(5)
    made.shutdown()
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines() if text.startswith("{")]
    assert (line["name"], line["kind"], line["status"]) == ("GET", "SERVER", "ERROR")
    assert line["attributes"] == {"url.path": "/x", "error.type": "503"}
    assert line["resource"]["service.name"] == "orders" and line["trace_id"] == f"{span.trace_id:032x}"
