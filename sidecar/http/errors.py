"""Proxy errors: each failure the sidecar answers itself, with its status and reason code
(docs: reference/replies.md).

Everything below the pipeline raises one of these; `pipeline.local_reply` is the one place that
turns them into a reply. Messages are short, safe to show a client, and never carry an internal
address or a stack trace.
"""

from __future__ import annotations


class ProxyError(Exception):
    """A failure with a reply the sidecar makes itself."""

    status: int = 500
    reason: str = "internal"
    default_message: str = "internal error"

    def __init__(self, message: str | None = None, *, detail: str | None = None) -> None:
        self.message = message or self.default_message
        # `detail` is for logs only (it may name addresses); it never reaches the client.
        self.detail = detail
        super().__init__(self.message if detail is None else f"{self.message}: {detail}")


class BadRequest(ProxyError):
    status, reason, default_message = 400, "bad_request", "malformed request"


class Unauthorized(ProxyError):
    status, reason, default_message = 403, "unauthorized", "caller is not allowed"


class NoRoute(ProxyError):
    status, reason, default_message = 404, "no_route", "no service or route matches this host"


class BodyTooLarge(ProxyError):
    status, reason, default_message = 413, "too_large", "request body too large"


class HeadersTooLarge(ProxyError):
    status, reason, default_message = 431, "too_large", "request header fields too large"


class UpstreamConnectFailure(ProxyError):
    status, reason, default_message = 502, "upstream_connect_failure", "could not connect to upstream"


class UpstreamReset(ProxyError):
    status, reason, default_message = 502, "upstream_reset", "upstream closed the connection"

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: str | None = None,
        before_response: bool = False,
        refused: bool = False,
    ) -> None:
        super().__init__(message, detail=detail)
        # True when the upstream sent not a single response byte: the keep-alive race, where a
        # pooled connection was closed by the peer just as we reused it.
        self.before_response = before_response or refused
        # True when the request provably never reached the app (HTTP/2 REFUSED_STREAM, or a stream
        # beyond a GOAWAY's last stream id): safe to send again, whatever the method.
        self.refused = refused


class UpstreamProtocolError(ProxyError):
    status, reason, default_message = 502, "upstream_protocol_error", "upstream sent a malformed response"


class NoHealthyUpstream(ProxyError):
    status, reason, default_message = 503, "no_healthy_upstream", "no healthy upstream endpoint"


class Overflow(ProxyError):
    status, reason, default_message = 503, "overflow", "upstream service overloaded"


class UpstreamTimeout(ProxyError):
    status, reason, default_message = 504, "upstream_timeout", "upstream did not answer in time"


class DownstreamGone(Exception):
    """The downstream client went away; nothing can be replied."""
