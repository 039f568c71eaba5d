"""gRPC over HTTP as the sidecar sees it, sans-IO: recognising a gRPC call, reading its
`grpc-timeout`, and shaping a reply the sidecar makes itself as a gRPC error.

A gRPC client reads a call's outcome from `grpc-status`, not from the HTTP status, so a local
reply toward one is HTTP 200 with `content-type: application/grpc`, no body, and `grpc-status` /
`grpc-message` in the header block (a "trailers-only" response), still carrying `x-sidecar-reason`.
"""

from __future__ import annotations

from urllib.parse import quote

from .message import Headers

# gRPC status codes (grpc/doc/statuscodes.md).
INTERNAL = 13
PERMISSION_DENIED = 7
UNIMPLEMENTED = 12
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
DEADLINE_EXCEEDED = 4

# reason code of a local reply -> the gRPC code a client should see (retryable failures are UNAVAILABLE).
STATUS_FOR_REASON = {
    "bad_request": INTERNAL,
    "unauthorized": PERMISSION_DENIED,
    "no_route": UNIMPLEMENTED,
    "too_large": RESOURCE_EXHAUSTED,
    "rate_limited": UNAVAILABLE,
    "upstream_connect_failure": UNAVAILABLE,
    "upstream_reset": UNAVAILABLE,
    "upstream_protocol_error": INTERNAL,
    "no_healthy_upstream": UNAVAILABLE,
    "overflow": UNAVAILABLE,
    "upstream_timeout": DEADLINE_EXCEEDED,
}

_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}


def is_grpc(content_type: bytes | None) -> bool:
    """Whether a request with this content-type is a gRPC call (`application/grpc`, `+proto`, ...)."""
    return content_type is not None and content_type[:16].lower() == b"application/grpc"


def grpc_timeout(value: bytes | None) -> float | None:
    """Seconds from a `grpc-timeout` value (1 to 8 digits and a unit: H M S m u n), or None when it is
    absent or malformed (a malformed one is ignored, as gRPC servers do)."""
    if value is None or not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], value[-1]
    if not digits.isdigit() or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def capped_timeout(timeout: float, headers: Headers) -> float:
    """The request timeout for a call: the configured one, or the caller's `grpc-timeout` if shorter."""
    deadline = grpc_timeout(headers.get(b"grpc-timeout"))
    return deadline if deadline is not None and deadline < timeout else timeout


def grpc_status_for(reason: str) -> int:
    return STATUS_FOR_REASON.get(reason, INTERNAL)


def grpc_message(text: str) -> bytes:
    """A `grpc-message` value: UTF-8, percent-encoded outside printable ASCII and for '%'."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")
