"""Tracing: settings from the config and `OTEL_*` variables, sampling, span ids, and the batch
export that keeps spans off the request path (docs: reference/observability.md).

Settings: a value in the `tracing` section wins; what it leaves out comes from the environment:
- exporter: `OTEL_TRACES_EXPORTER` (otlp | console | none); when neither says, `otlp` if an OTLP
  endpoint is known (the file's, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_ENDPOINT`), else `none`: a sidecar with no collector spends nothing on spans.
- endpoint: the file's base URL + `/v1/traces`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is,
  else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, else `http://localhost:4318/v1/traces`. Headers,
  timeout and compression of the exporter come from the usual `OTEL_EXPORTER_OTLP_*` variables.
- sample_ratio: else `OTEL_TRACES_SAMPLER_ARG` (for the ratio samplers; `always_off` is 0), else 1.
  Sampling is parent-based: a caller's decision is always followed, the ratio decides new traces.

What OpenTelemetry's SDK gives here: the Resource (`service.name` = the Sidecar's service, the SDK's
`telemetry.sdk.*` attributes, and `OTEL_RESOURCE_ATTRIBUTES`) and the ratio sampler's arithmetic
(`TraceIdRatioBased`: a new trace is sampled when the low 64 bits of its id fall under the bound).
Spans themselves are `span.Span` records, not the SDK's: an SDK span costs 40-60 µs on the request
path (objects, locks, attribute cleaning, a copy at end), which would take tracing at 100 % below
70 % of the untraced throughput; a record costs a few µs (docs: benchmarks.md has the figures).

Export never touches the request path: ending a sampled span appends it to a bounded queue, and a
worker thread sends batches (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, default 512; at least every
`OTEL_BSP_SCHEDULE_DELAY` ms, default 5000) with the OTLP/HTTP exporter of `otlp.py`, or prints them
(`console`). A slow or dead collector costs dropped spans only: when the queue
(`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048) is full, a span is dropped, as are those of a failed
export; both show in `sidecar_spans_dropped_total`, and a failed export is logged at most once a
minute. With `none`, no span is made and trace headers pass through untouched.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config.schema import Tracing as TracingConfig
from ..logger import get_logger
from .span import SAMPLED, Parent, Span

log = get_logger("sidecar.tracing")

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
TRACES_PATH = "/v1/traces"
EXPORT_FAILURE_LOG_INTERVAL = 60.0  # seconds between two warnings about failed exports
SHUTDOWN_WAIT = 2.0  # seconds the last spans may take to leave at exit


@dataclass(frozen=True)
class TracingSettings:
    exporter: str  # otlp | console | none
    endpoint: str  # the full traces URL (otlp only)
    sample_ratio: float


def resolve_settings(config: TracingConfig, environ: Mapping[str, str] = os.environ) -> TracingSettings:
    """The effective settings: the file's values, then the `OTEL_*` variables, then defaults. Only
    OTLP over HTTP/protobuf is spoken: another `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL` is warned about."""
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip() != "http/protobuf":
        log.warning("otel_protocol_unsupported", value=protocol, using="http/protobuf")
    endpoint = _endpoint(config.endpoint, environ)
    exporter = config.exporter or _env_exporter(environ)
    if exporter is None:
        exporter = "otlp" if endpoint is not None else "none"
    ratio = config.sample_ratio if config.sample_ratio is not None else _env_ratio(environ)
    return TracingSettings(exporter, endpoint or DEFAULT_ENDPOINT, ratio)


def _endpoint(configured: str | None, environ: Mapping[str, str]) -> str | None:
    if configured:
        return configured.rstrip("/") + TRACES_PATH
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + TRACES_PATH
    return None


def _env_exporter(environ: Mapping[str, str]) -> str | None:
    named = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    for name in named:
        if name in ("otlp", "console", "none"):
            return name
    if named:
        log.warning("otel_traces_exporter_unsupported", value=environ["OTEL_TRACES_EXPORTER"], using="otlp")
        return "otlp"
    return None


def _env_ratio(environ: Mapping[str, str]) -> float:
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip()
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    if sampler in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
        except ValueError:
            return 1.0
        return min(1.0, max(0.0, ratio))
    return 1.0


def _env_int(name: str, default: int, environ: Mapping[str, str]) -> int:
    try:
        value = int(environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


class Tracing:
    """Spans of this sidecar's `service`: sampled as `settings` say, exported in batches."""

    def __init__(self, service: str, settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        self.settings = settings
        self.resource = dict(Resource.create({"service.name": service}).attributes)
        self._bound = TraceIdRatioBased.get_bound_for_rate(settings.sample_ratio)
        self.max_queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048, environ)
        self.batch_size = min(self.max_queue, _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, environ))
        self.delay = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000, environ) / 1000
        self._queue: deque[Span] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._export = self._exporter(settings)
        self.dropped_in_queue = 0  # written by the trio thread only
        self.dropped_in_export = 0  # written by the worker thread only
        self.deadline: float | None = None  # at shutdown: batches past it are dropped unsent
        self._warned_at = -EXPORT_FAILURE_LOG_INTERVAL
        self._worker = threading.Thread(target=self._work, name="sidecar-span-export", daemon=True)
        self._worker.start()

    @property
    def dropped(self) -> int:
        return self.dropped_in_queue + self.dropped_in_export

    # -- the request path ---------------------------------------------------------------------------

    def start(
        self, name: str, kind: int, parent: Parent | None, attributes: dict[str, Any], start_ns: int | None = None
    ) -> Span:
        """A span, child of `parent` (None: a new trace). Sampling is parent-based: the caller's
        decision is followed; a new trace is sampled by the ratio. Only a sampled span is exported."""
        span_id = random.getrandbits(64) or 1
        if parent is not None:
            trace_id, flags = parent.trace_id, parent.flags & SAMPLED
        else:
            trace_id = random.getrandbits(128) or 1
            flags = SAMPLED if trace_id & 0xFFFFFFFFFFFFFFFF < self._bound else 0
        on_end = self._ended if flags else None
        return Span(trace_id, span_id, parent, flags, name, kind, start_ns or time.time_ns(), attributes, on_end)

    def _ended(self, span: Span) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue or (self._stopping and not self._worker.is_alive()):
            self.dropped_in_queue += 1
            return
        queue.append(span)
        if len(queue) >= self.batch_size:
            self._wake.set()

    # -- the worker thread --------------------------------------------------------------------------

    def _work(self) -> None:
        queue = self._queue
        while not self._stopping:
            self._wake.wait(self.delay)
            self._wake.clear()
            while queue:
                batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                self._send(batch)
                if self._stopping and not queue:
                    break

    def _send(self, batch: list[Span]) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.dropped_in_export += len(batch)
            return
        try:
            ok, detail = self._export(batch), ""
        except Exception as error:  # an exporter bug must not end the worker
            ok, detail = False, repr(error)
        if not ok:
            self.dropped_in_export += len(batch)
            now = time.monotonic()
            if now - self._warned_at >= EXPORT_FAILURE_LOG_INTERVAL:
                self._warned_at = now
                log.warning(
                    "trace_export_failed", spans=len(batch), detail=detail, dropped_so_far=self.dropped_in_export
                )

    def _exporter(self, settings: TracingSettings) -> Any:
        if settings.exporter == "console":
            return self._print
        from .otlp import OtlpHttpExporter

        exporter = OtlpHttpExporter(settings.endpoint)
        resource = self.resource
        return lambda batch: exporter.export(batch, resource)

    def _print(self, batch: Sequence[Span]) -> bool:
        for span in batch:
            record = {
                "name": span.name,
                "trace_id": f"{span.trace_id:032x}",
                "span_id": f"{span.span_id:016x}",
                "parent_id": f"{span.parent_id:016x}" if span.parent_id else None,
                "kind": {2: "SERVER", 3: "CLIENT"}.get(span.kind, str(span.kind)),
                "start_time_unix_nano": span.start_ns,
                "end_time_unix_nano": span.end_ns,
                "status": "ERROR" if span.status else "UNSET",
                "attributes": span.attributes,
                "resource": self.resource,
            }
            sys.stdout.write(json.dumps(record, default=str) + "\n")
        sys.stdout.flush()
        return True

    def retire(self) -> None:
        """Stop taking spans' export further: the worker sends what is queued and ends (a reload
        replaced this tracer). Does not wait."""
        self._stopping = True
        self._wake.set()

    def shutdown(self) -> None:
        """Send what is queued, for at most `SHUTDOWN_WAIT` seconds (the worker is a daemon thread:
        a collector that hangs never holds the process)."""
        self.deadline = time.monotonic() + SHUTDOWN_WAIT
        self._stopping = True
        self._wake.set()
        self._worker.join(SHUTDOWN_WAIT)
