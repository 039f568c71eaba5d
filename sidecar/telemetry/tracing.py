"""OpenTelemetry tracing: settings from the config and `OTEL_*` variables, the SDK's provider and
batch export, and W3C trace context in and out of HTTP headers (SPEC §7).

Settings: a value in the `tracing` section wins; what it leaves out comes from the environment:
- exporter: `OTEL_TRACES_EXPORTER` (otlp | console | none); when neither says, `otlp` if an OTLP
  endpoint is known (the file's, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_ENDPOINT`), else `none`: a sidecar with no collector spends nothing on spans.
- endpoint: the file's base URL + `/v1/traces`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is,
  else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, else `http://localhost:4318/v1/traces`. Headers,
  timeout and compression of the exporter come from the usual `OTEL_EXPORTER_OTLP_*` variables.
- sample_ratio: else `OTEL_TRACES_SAMPLER_ARG` (for the ratio samplers; `always_off` is 0), else 1.
  Sampling is parent-based: a caller's decision is always followed, the ratio decides new traces.

Export never touches the request path: ending a span appends it to the SDK's batch queue, and the
SDK's worker thread sends batches. A slow or dead collector costs dropped spans only: when the
queue is full, spans are dropped (counted), as are those of a failed export; both show in
`sidecar_spans_dropped_total`, and a failed export is logged at most once a minute.

The SDK is imported only when tracing is on: with `none` no span is made and trace headers pass
through untouched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from ..config.schema import Tracing as TracingConfig
from ..http.message import Headers

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Span, Tracer

log = structlog.get_logger("sidecar.tracing")

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
TRACES_PATH = "/v1/traces"
MAX_QUEUE = 2048  # spans waiting for export; more are dropped (the SDK's default queue size)
EXPORT_FAILURE_LOG_INTERVAL = 60.0  # seconds between two warnings about failed exports
SHUTDOWN_WAIT = 2.0  # seconds the last spans may take to leave at exit


@dataclass(frozen=True)
class TracingSettings:
    exporter: str  # otlp | console | none
    endpoint: str  # the full traces URL (otlp only)
    sample_ratio: float


def resolve_settings(config: TracingConfig, environ: Mapping[str, str] = os.environ) -> TracingSettings:
    """The effective settings: the file's values, then the `OTEL_*` variables, then defaults."""
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


class _HeaderGetter:
    """Reads trace context fields out of our `Headers` for the W3C propagator."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Headers) -> list[str]:
        return [name.decode("latin-1") for name, _, _ in carrier.fields]


class Tracing:
    """The process's tracer: spans for `service`, sampled and exported as `settings` say."""

    def __init__(self, service: str, settings: TracingSettings) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # The SDK would log each dropped span and failed export; the counter and our own throttled
        # warning say it once.
        logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
        self.settings = settings
        self._exporter = _CountingExporter(_make_exporter(settings))
        batches = BatchSpanProcessor(self._exporter, max_queue_size=MAX_QUEUE)  # type: ignore[arg-type]
        self._processor = _BoundedProcessor(batches, self)
        self._provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=Resource.create({"service.name": service}),
            shutdown_on_exit=False,  # `shutdown` bounds the wait; atexit would wait 30 s for a dead collector
        )
        self._provider.add_span_processor(self._processor)  # type: ignore[arg-type]
        self._tracer: Tracer = self._provider.get_tracer("sidecar")
        self._propagator = TraceContextTextMapPropagator()
        self._getter = _HeaderGetter()
        self.server_kind = SpanKind.SERVER
        self.client_kind = SpanKind.CLIENT
        self.dropped_in_queue = 0  # written by the trio thread only

    @property
    def dropped(self) -> int:
        return self.dropped_in_queue + self._exporter.dropped

    def extract(self, headers: Headers) -> Context | None:
        """The caller's trace context from `traceparent`/`tracestate`, or None when there is none."""
        if b"traceparent" not in headers:
            return None
        return self._propagator.extract(headers, getter=self._getter)  # type: ignore[arg-type]

    def start(
        self, name: str, kind: Any, parent: Context | None, attributes: dict[str, Any], start_ns: int | None = None
    ) -> Span:
        """A span (recording or not, as sampling decides); the caller ends it."""
        return self._tracer.start_span(name, context=parent, kind=kind, attributes=attributes, start_time=start_ns)

    def shutdown(self) -> None:
        """Send what is queued, waiting at most `SHUTDOWN_WAIT` (the worker thread is a daemon)."""
        self._exporter.deadline = time.monotonic() + SHUTDOWN_WAIT
        self._processor.force_flush(int(SHUTDOWN_WAIT * 1000))


def _make_exporter(settings: TracingSettings) -> Any:
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from .otlp import OtlpHttpExporter

    return OtlpHttpExporter(settings.endpoint)


class _CountingExporter:
    """The real exporter, counting the spans handed to it and those a failed export lost (written
    by the SDK's worker thread only)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.handed = 0
        self.dropped = 0
        self.deadline: float | None = None  # at shutdown: past it, batches are dropped unsent
        self._warned_at = -EXPORT_FAILURE_LOG_INTERVAL

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.handed += len(spans)
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.dropped += len(spans)
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception as error:  # an exporter bug must not kill the worker thread
            result, detail = SpanExportResult.FAILURE, repr(error)
        else:
            detail = ""
        if result is not SpanExportResult.SUCCESS:
            self.dropped += len(spans)
            now = time.monotonic()
            if now - self._warned_at >= EXPORT_FAILURE_LOG_INTERVAL:
                self._warned_at = now
                log.warning("trace_export_failed", spans=len(spans), detail=detail, dropped_so_far=self.dropped)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _BoundedProcessor:
    """The SDK's BatchSpanProcessor behind a count of what waits in its queue: a span that would
    not fit is dropped and counted here, instead of silently pushing out the oldest one."""

    def __init__(self, inner: Any, tracing: Tracing) -> None:
        self.inner = inner
        self.tracing = tracing
        self.submitted = 0  # written by the trio thread only

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def _on_ending(self, span: Any) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        if self.submitted - self.tracing._exporter.handed >= MAX_QUEUE:
            self.tracing.dropped_in_queue += 1
            return
        self.submitted += 1
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))
