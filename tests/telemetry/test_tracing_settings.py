"""sidecar.telemetry.tracing.resolve_settings: the file's `tracing` values win, the OTEL_* variables
fill what it leaves out, and with neither tracing is off."""

from __future__ import annotations

import pytest

from sidecar.config.schema import Tracing
from sidecar.telemetry.tracing import DEFAULT_ENDPOINT, TracingSettings, resolve_settings


@pytest.mark.parametrize(
    ("config", "environ", "expected"),
    [
        (Tracing(), {}, TracingSettings("none", DEFAULT_ENDPOINT, 1.0)),
        (
            Tracing(endpoint="http://collector:4318/"),
            {},
            TracingSettings("otlp", "http://collector:4318/v1/traces", 1.0),
        ),
        (
            Tracing(),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"},
            TracingSettings("otlp", "http://env:4318/v1/traces", 1.0),
        ),
        (  # the signal-specific variable is the full URL, used as it is
            Tracing(),
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:4318/custom", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
            TracingSettings("otlp", "http://env:4318/custom", 1.0),
        ),
        (  # the file wins over the environment, field by field
            Tracing(endpoint="http://file:4318", sample_ratio=0.25),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318", "OTEL_TRACES_EXPORTER": "console"},
            TracingSettings("console", "http://file:4318/v1/traces", 0.25),
        ),
        (
            Tracing(exporter="otlp"),
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            TracingSettings("otlp", DEFAULT_ENDPOINT, 0.1),
        ),
        (Tracing(exporter="otlp"), {"OTEL_TRACES_SAMPLER": "always_off"}, TracingSettings("otlp", DEFAULT_ENDPOINT, 0)),
        (
            Tracing(exporter="none"),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"},
            TracingSettings("none", "http://env:4318/v1/traces", 1.0),
        ),
        (Tracing(), {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://e"}, None),
    ],
)
def test_file_then_environment_then_defaults(
    config: Tracing, environ: dict[str, str], expected: TracingSettings | None
) -> None:
    settings = resolve_settings(config, environ)
    if expected is None:
        assert settings.exporter == "none"
    else:
        assert settings == expected
