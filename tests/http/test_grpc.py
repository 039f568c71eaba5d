"""sidecar.http.grpc: recognising gRPC calls, `grpc-timeout`, and gRPC error fields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.grpc import capped_timeout, grpc_message, grpc_status_for, grpc_timeout, is_grpc
from sidecar.http.message import Headers


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"Application/GRPC+json", True),
        (b"application/grpc-web", True),
        (b"application/json", False),
        (b"text/plain", False),
        (None, False),
    ],
)
def test_is_grpc(content_type: bytes | None, expected: bool) -> None:
    assert is_grpc(content_type) is expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"300m", 0.3),
        (b"250000u", 0.25),
        (b"99999999n", 0.099999999),
        (b"", None),
        (b"S", None),
        (b"10", None),
        (b"1x", None),
        (b"-1S", None),
        (b"123456789S", None),  # more than 8 digits
        (None, None),
    ],
)
def test_grpc_timeout(value: bytes | None, seconds: float | None) -> None:
    result = grpc_timeout(value)
    assert result == pytest.approx(seconds) if seconds is not None else result is None


@given(st.binary(max_size=12))
def test_grpc_timeout_never_raises(value: bytes) -> None:
    result = grpc_timeout(value)
    assert result is None or result >= 0


def test_capped_timeout_takes_the_shorter() -> None:
    assert capped_timeout(15.0, Headers.of([(b"grpc-timeout", b"300m")])) == pytest.approx(0.3)
    assert capped_timeout(1.0, Headers.of([(b"grpc-timeout", b"5S")])) == 1.0
    assert capped_timeout(1.0, Headers.of([(b"grpc-timeout", b"junk")])) == 1.0
    assert capped_timeout(1.0, Headers()) == 1.0


def test_status_mapping_and_unknown_reasons() -> None:
    assert grpc_status_for("upstream_timeout") == 4  # DEADLINE_EXCEEDED
    assert grpc_status_for("no_healthy_upstream") == 14  # UNAVAILABLE
    assert grpc_status_for("internal") == 13  # INTERNAL for anything unmapped


def test_grpc_message_percent_encodes_only_what_it_must() -> None:
    assert grpc_message("upstream did not answer in time") == b"upstream did not answer in time"
    assert grpc_message("100% sure") == b"100%25 sure"
    assert grpc_message("caf\u00e9\n") == b"caf%C3%A9%0A"
