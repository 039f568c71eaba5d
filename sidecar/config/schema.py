"""Typed, immutable models of the three config kinds: Sidecar, Service and Route.

This module owns what a valid document *is*: the field names, their defaults and how each is read.
It knows nothing about files, YAML or line numbers; ``loader.py`` feeds it plain Python data and turns
its ``ValidationError``s into ``FILE:LINE`` issues. The value notations (durations, sizes, addresses)
live in ``notation.py``, the validator that reads the field declarations in ``fields.py``.

Rules that hold for every model here (see ``fields.py``):

- Unknown fields are errors, and every model is a frozen dataclass.
- A field explicitly set to ``null`` counts as not set, so its default applies (``inbound: null``
  therefore means "no inbound listener", exactly as leaving ``inbound`` out does).
- Integers are strict: ``true`` or ``"5"`` is not an integer.
- Durations are stored as float seconds, sizes as int bytes, addresses as ``Address``. In a file a
  duration must be a string with a unit (validate with ``context=FILE_CONTEXT``); code building
  models directly may pass plain float seconds.
- File paths (``tls.cert`` ...) are stored as written; ``Snapshot.resolve`` gives the file to open
  (a relative path is relative to the config directory). Whether the files exist and hold what they
  should is the loader's check (with ``certfiles.py``), as are rules across documents
  (``Sidecar.tls`` is required by the inbound listener and by mutual-TLS services).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from .fields import (
    INTEGER,
    FieldError,
    Model,
    Parser,
    ValidationError,
    bounded,
    items,
    nested,
    one_of,
    plain,
    show,
)
from .notation import (
    Address,
    format_duration,
    format_size,
    normalize_host,
    parse_duration,
    parse_name,
    parse_server_name,
    parse_size,
    parse_spiffe_id,
)

__all__ = [
    "FILE_CONTEXT",
    "KINDS",
    "Address",
    "AdminConfig",
    "CaptureConfig",
    "EndpointConfig",
    "HashOn",
    "HealthCheck",
    "InboundConfig",
    "Limits",
    "OutboundConfig",
    "OutlierDetection",
    "RouteConfig",
    "RouteMatch",
    "RouteRule",
    "RouteTarget",
    "ServiceConfig",
    "ServiceTls",
    "SidecarConfig",
    "SidecarTls",
    "Timeouts",
    "Tracing",
    "ValidationError",
    "format_duration",
    "format_size",
    "normalize_host",
    "parse_duration",
    "parse_size",
    "show",
]

FILE_CONTEXT: Mapping[str, bool] = MappingProxyType({"from_file": True})
"""Validation context for data read from a config file: durations there must be strings with a unit."""

_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token, e.g. a cookie name
_REQUEST_PATH_RE = re.compile(r"/[\x21-\x7e]*")  # what may follow GET in a request line


def _address(value: object) -> Address:
    return value if isinstance(value, Address) else Address.parse(value)


def _duration(value: object, from_file: bool) -> float:
    # Code may pass float seconds (``Timeouts(connect=0.5)``); a file must name the unit.
    if (
        not from_file
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        return float(value)
    return parse_duration(value)


def _path(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a path starting with '/', got {show(value)}")
    if not value.startswith("/"):
        raise ValueError(f"invalid path {show(value)} (must start with '/')")
    return value


def _request_path(value: object) -> str:
    """A path this sidecar sends itself (health checks): visible ASCII only, no spaces."""
    path = _path(value)
    if not _REQUEST_PATH_RE.fullmatch(path):
        raise ValueError(f"invalid path {show(value)} (visible ASCII only, no spaces)")
    return path


def _cookie_name(value: object) -> str:
    """A cookie name, kept as written (cookie names are case-sensitive)."""
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"invalid cookie name {show(value)}")
    return value


def _file_path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a file path, got {show(value)}")
    if "\0" in value:
        raise ValueError(f"invalid file path {show(value)} (contains a NUL character)")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show(value)}")
    return value


def _header_name(value: object) -> str:
    if not isinstance(value, str) or not _HEADER_NAME_RE.fullmatch(value.lower()):
        raise ValueError(f"invalid header name {show(value)}")
    return value.lower()


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number 1..65535, got {show(value)}")
    return value


def _ip(value: object) -> str:
    """An IPv4 or IPv6 address (no port, no brackets), in its canonical text form."""
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address, got {show(value)}")
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise ValueError(f"expected an IP address, got {show(value)}") from None


def _cidr(value: object) -> str:
    """An IPv4 or IPv6 network (``10.0.0.0/8``; a bare address means just it), in canonical form."""
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR such as 169.254.169.254/32, got {show(value)}")
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as error:
        raise ValueError(f"invalid CIDR {show(value)} ({error})") from None


ADDRESS = plain(_address, dump=str)
PORT = plain(_port)
IP = plain(_ip)
CIDR = plain(_cidr)
BOOLEAN = plain(_boolean)
HEADER_NAME = plain(_header_name)
DURATION = Parser(_duration, dump=format_duration)
HOST = plain(normalize_host)

AddressField = Annotated[Address, ADDRESS]
"""An ``Address`` given as ``host:port``; written back as that text."""
Duration = Annotated[float, DURATION]
"""Float seconds given as ``250ms``/``1s``/``2m``/``1h``; written back in that notation."""
Size = Annotated[int, plain(parse_size, dump=format_size)]
"""Int bytes given as ``1024`` or ``64KiB``/``1MiB``/``2GiB``; written back in that notation."""
Name = Annotated[str, plain(parse_name)]
Host = Annotated[str, HOST]
HTTP_PATH = plain(_path)
REQUEST_PATH = plain(_request_path)
COOKIE_NAME = plain(_cookie_name)
FILE_PATH = plain(_file_path)
FilePath = Annotated[str, FILE_PATH]
"""A file path as written: absolute, or relative to the config directory (``Snapshot.resolve``)."""
SPIFFE_ID = plain(parse_spiffe_id)
SPIFFE_PATTERN = plain(lambda value: parse_spiffe_id(value, pattern=True))
SERVER_NAME = plain(parse_server_name)

SECONDS = 1.0
KiB = 1 << 10


# --------------------------------------------------------------------------------------------------
# kind: Sidecar
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarTls(Model):
    """This workload's mutual-TLS identity: its certificate and key, and the mesh trust bundle.

    Paths are stored as written (relative to the config directory unless absolute); the loader checks
    that the files load, that the key matches and that the certificate carries one SPIFFE ID.
    """

    cert: FilePath
    """The workload certificate (PEM, chain allowed); its one ``spiffe://`` URI SAN is this workload's ID."""
    key: FilePath
    """The certificate's private key (PEM, unencrypted)."""
    ca: FilePath
    """The trust bundle (PEM certificates) peers' certificates must chain to: the mesh roots."""


InboundMode = Literal["strict", "permissive"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundConfig(Model):
    """The inbound listener: accepts callers from the mesh and forwards to the local app."""

    listen: AddressField = Address("0.0.0.0", 15006)  # noqa: RUF009 (frozen)
    """Where the inbound listener binds."""
    app: AddressField = Address("127.0.0.1", 8080)  # noqa: RUF009 (frozen)
    """The local app that inbound requests are forwarded to."""
    app_protocol: Annotated[Literal["http1", "h2c"], one_of("http1", "h2c")] = "http1"
    """How to speak to the app: HTTP/1.1, or HTTP/2 with prior knowledge (gRPC apps)."""
    app_idle_timeout: Duration = 4 * SECONDS
    """Pooled connections to the app close after this long idle (below common app keep-alives)."""
    mode: Annotated[InboundMode, one_of(*get_args(InboundMode))] = "strict"
    """``strict``: mutual TLS only; ``permissive``: mutual TLS and plaintext on the one port."""
    allow: Annotated[tuple[str, ...] | None, items(SPIFFE_PATTERN, distinct=True)] = None
    """Caller SPIFFE IDs let in; ``*`` globs a path segment. ``None`` (absent): any mesh identity;
    an empty tuple: nobody."""
    tcp_ports: Annotated[tuple[int, ...], items(PORT, distinct=True)] = ()
    """App ports a peer sidecar may reach as opaque TCP in explicit mode (on the app's host). In
    transparent mode the original destination names the port and this list is not consulted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundConfig(Model):
    """The outbound listener: the local app sends its plain HTTP calls here."""

    listen: AddressField = Address("127.0.0.1", 15001)  # noqa: RUF009 (frozen)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig(Model):
    """The admin listener: /ready, /live, /metrics, /config, /clusters, /drain."""

    listen: AddressField = Address("127.0.0.1", 15000)  # noqa: RUF009 (frozen)


def _ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {show(value)}")
    return float(value)


def _collector_url(value: object) -> str:
    """An OTLP/HTTP base URL (``/v1/traces`` is appended), as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is."""
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(f"expected an http:// or https:// URL, got {show(value)}")
    return value


TraceExporter = Literal["otlp", "console", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracing(Model):
    """Where spans go. A field left out is taken from the standard ``OTEL_*`` environment
    variables (``telemetry/tracing.py`` says which); values written here win over them."""

    exporter: Annotated[TraceExporter | None, one_of(*get_args(TraceExporter))] = None
    """``otlp`` (HTTP/protobuf), ``console`` (spans as JSON on stdout) or ``none``."""
    endpoint: Annotated[str | None, plain(_collector_url)] = None
    """The collector's OTLP/HTTP base URL, e.g. ``http://127.0.0.1:4318``."""
    sample_ratio: Annotated[float | None, plain(_ratio)] = None
    """The share of new traces recorded (0 to 1); a caller's sampling decision is always followed."""


CaptureMode = Literal["explicit", "transparent"]
OutboundPolicy = Literal["allow_any", "registry_only"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureConfig(Model):
    """How the app's traffic reaches the sidecar. ``explicit``: the app sends HTTP to the outbound
    listener (or dials a tcp Service's ``listen`` port). ``transparent``: nat rules installed by
    ``sidecar iptables`` redirect all of the pod's TCP to the listeners, with no change to the app."""

    mode: Annotated[CaptureMode, one_of(*get_args(CaptureMode))] = "explicit"
    proxy_uid: Annotated[int, bounded(INTEGER, ge=0)] = 1337
    """The UID the sidecar runs as: its own connections are never captured."""
    exclude_inbound_ports: Annotated[tuple[int, ...], items(PORT, distinct=True)] = ()
    """Inbound ports never redirected (the admin and health ports never are)."""
    exclude_outbound_ports: Annotated[tuple[int, ...], items(PORT, distinct=True)] = ()
    """Destination ports the app reaches directly, outside the mesh."""
    exclude_outbound_cidrs: Annotated[tuple[str, ...], items(CIDR, distinct=True)] = ()
    """Destination networks the app reaches directly, e.g. ``169.254.169.254/32``."""
    opaque_ports: Annotated[tuple[int, ...], items(PORT, distinct=True)] = (3306, 5432, 6379, 9092)
    """Destination ports taken as TCP at once, without protocol detection (server-speaks-first
    protocols would otherwise wait ``detect_timeout`` for a first byte from the client)."""
    detect_timeout: Annotated[float, bounded(DURATION, gt=0)] = 1 * SECONDS
    """A captured connection that sends no first byte within this long is taken as TCP."""
    outbound_policy: Annotated[OutboundPolicy, one_of(*get_args(OutboundPolicy))] = "allow_any"
    """A destination no Service matches: ``allow_any`` passes it through unchanged, ``registry_only``
    refuses it (HTTP: 404 ``no_route``; TCP: the connection is reset)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits(Model):
    """Request limits, applied on both listeners."""

    max_request_headers: Size = 64 * KiB
    """Largest request header block, in bytes (431 beyond it)."""
    max_request_body: Size = 0
    """Largest request body, in bytes (413 beyond it); 0 means unlimited (streamed)."""
    header_read_timeout: Duration = 10 * SECONDS
    """Time allowed from a request's first byte to the end of its header block."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarConfig(Model):
    """``kind: Sidecar``: this workload's own proxy settings. Exactly one per config directory."""

    service: Name
    """This workload's service name (also the OTel ``service.name``)."""
    tls: Annotated[SidecarTls | None, nested(SidecarTls)] = None
    """The workload certificate; required (by the loader) with an inbound section or a mutual-TLS service."""
    inbound: Annotated[InboundConfig | None, nested(InboundConfig)] = None
    """The inbound listener; ``None`` (section absent) means no inbound listener: a pure client."""
    outbound: Annotated[OutboundConfig, nested(OutboundConfig)] = OutboundConfig()
    admin: Annotated[AdminConfig, nested(AdminConfig)] = AdminConfig()
    tracing: Annotated[Tracing, nested(Tracing)] = Tracing()
    limits: Annotated[Limits, nested(Limits)] = Limits()
    capture: Annotated[CaptureConfig, nested(CaptureConfig)] = CaptureConfig()
    """Explicit (the default) or transparent capture of the app's traffic."""
    drain_timeout: Duration = 20 * SECONDS
    """On drain, exit at the latest after this long."""


# --------------------------------------------------------------------------------------------------
# kind: Service
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig(Model):
    """One static endpoint of a service: an IP address, or a DNS name re-resolved every ``dns_refresh``."""

    address: AddressField
    weight: Annotated[int, bounded(INTEGER, ge=1)] = 1
    """Relative share of traffic for this endpoint."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts(Model):
    """Upstream timeouts of a service."""

    connect: Duration = 1 * SECONDS
    """Bound on establishing a connection (TCP and TLS) to one endpoint."""
    request: Duration = 15 * SECONDS
    """Bound on a whole request, from sending to the end of the response head."""
    per_try: Annotated[float | None, bounded(DURATION, gt=0)] = None
    """Bound on one try, up to its response head; ``None``: only ``request`` bounds the tries. A try
    that runs out counts as a gateway error for retries."""
    idle: Duration = 60 * SECONDS
    """Pooled upstream connections close after this long idle; so does a WebSocket with no traffic either way."""


ServiceTlsMode = Literal["mutual", "simple", "disabled"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceTls(Model):
    """How connections to a service's endpoints are secured."""

    mode: Annotated[ServiceTlsMode, one_of(*get_args(ServiceTlsMode))] = "mutual"
    """``mutual``: mesh mTLS with the workload certificate; ``simple``: server-authenticated TLS, as for
    an external API; ``disabled``: plaintext."""
    identity: Annotated[str | None, SPIFFE_ID] = None
    """Mutual only: the SPIFFE ID the peer must present (any mesh identity when ``None``)."""
    ca: Annotated[str | None, FILE_PATH] = None
    """Simple only: a trust bundle file to verify the server with, instead of the system store."""
    server_name: Annotated[str | None, SERVER_NAME] = None
    """Simple only: the name sent as SNI and verified; ``None``: the endpoint's host name."""

    def check(self, given: Mapping[str, Any]) -> None:
        errors = []
        if self.identity is not None and self.mode != "mutual":
            errors.append(FieldError(("identity",), "identity applies to mode mutual only"))
        for name in ("ca", "server_name"):
            if getattr(self, name) is not None and self.mode != "simple":
                errors.append(FieldError((name,), f"{name} applies to mode simple only"))
        if errors:
            raise ValidationError(errors)


RetryCondition = Literal["connect-failure", "refused-stream", "reset", "gateway-error", "5xx", "retriable-status"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff(Model):
    """Wait before a retry: exponential from ``base``, capped at ``max``, with full jitter."""

    base: Annotated[float, bounded(DURATION, gt=0)] = 0.025
    max: Annotated[float, bounded(DURATION, gt=0)] = 0.25

    def check(self, given: Mapping[str, Any]) -> None:
        if self.max < self.base:
            raise ValidationError([FieldError(("max",), "must be at least base")])


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget(Model):
    """Retries in flight may add at most ``percent`` of the service's active requests, and at least
    ``min_per_second`` retries a second are always allowed."""

    percent: Annotated[int, bounded(INTEGER, ge=0, le=100)] = 20
    min_per_second: Annotated[int, bounded(INTEGER, ge=0)] = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Retries(Model):
    """When and how often a failed try is sent again (docs: behaviour/resilience.md)."""

    attempts: Annotated[int, bounded(INTEGER, ge=0, le=10)] = 2
    """Retries after the first try."""
    on: Annotated[tuple[RetryCondition, ...], items(one_of(*get_args(RetryCondition)), distinct=True)] = (
        "connect-failure",
        "refused-stream",
        "reset",
        "gateway-error",
    )
    retriable_status: Annotated[tuple[int, ...], items(bounded(INTEGER, ge=100, le=599), distinct=True)] = ()
    """Statuses retried with the ``retriable-status`` condition."""
    backoff: Annotated[Backoff, nested(Backoff)] = Backoff()
    budget: Annotated[RetryBudget, nested(RetryBudget)] = RetryBudget()
    buffer: Size = 64 * KiB
    """Request bodies up to this size are kept so that they can be sent again."""
    non_idempotent: Annotated[bool, BOOLEAN] = False
    """Whether reset, gateway-error, 5xx and retriable-status also retry non-idempotent methods."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker(Model):
    """Thresholds per service and per sidecar process; a full one answers 503 ``overflow`` at once."""

    max_connections: Annotated[int, bounded(INTEGER, ge=1)] = 1024
    max_pending: Annotated[int, bounded(INTEGER, ge=1)] = 1024
    max_requests: Annotated[int, bounded(INTEGER, ge=1)] = 1024
    max_retries: Annotated[int, bounded(INTEGER, ge=0)] = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection(Model):
    """Passive health: ejection of endpoints whose answers keep failing (docs: behaviour/resilience.md).

    A try that ends without a response counts as a 5xx and as a gateway error; a 502, 503 or 504 counts
    as both; another 5xx counts as a 5xx and breaks a run of gateway errors; any other status ends both
    runs. Reaching either threshold ejects the endpoint at once, for ``base_ejection * times ejected``
    (at most 300 s), unless that would eject more than ``max_ejection_percent`` of the endpoints.
    """

    consecutive_5xx: Annotated[int, bounded(INTEGER, ge=1)] = 5
    """Consecutive 5xx answers (or tries without an answer) that eject an endpoint."""
    consecutive_gateway_errors: Annotated[int, bounded(INTEGER, ge=1)] = 5
    """Consecutive 502/503/504 answers (or tries without an answer) that eject an endpoint."""
    interval: Annotated[float, bounded(DURATION, gt=0)] = 10 * SECONDS
    """How often an endpoint back in service for ``base_ejection`` has its count of ejections lowered
    by one (an ejected endpoint returns as soon as its time is up, not at a review)."""
    base_ejection: Annotated[float, bounded(DURATION, gt=0)] = 30 * SECONDS
    """The first ejection's length; the n-th lasts n times this, capped at 300 s."""
    max_ejection_percent: Annotated[int, bounded(INTEGER, ge=0, le=100)] = 50
    """No ejection takes the share of ejected endpoints above this percentage (a hard cap: a service
    with a single endpoint is ejected only at 100)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck(Model):
    """Active health checks: ``GET path`` to every endpoint each ``interval`` (through the peer sidecar,
    over mutual TLS with this sidecar's identity, for a mesh service). A 2xx answer within ``timeout``
    is a success; anything else, or nothing, is a failure. Endpoints start healthy."""

    path: Annotated[str, REQUEST_PATH] = "/healthz"
    interval: Annotated[float, bounded(DURATION, gt=0)] = 5 * SECONDS
    timeout: Annotated[float, bounded(DURATION, gt=0)] = 1 * SECONDS
    """Bound on one check: connecting (TCP and TLS), sending, and the answer's status line and headers."""
    healthy_threshold: Annotated[int, bounded(INTEGER, ge=1)] = 1
    """Consecutive successes that make an unhealthy endpoint healthy again."""
    unhealthy_threshold: Annotated[int, bounded(INTEGER, ge=1)] = 3
    """Consecutive failures that make a healthy endpoint unhealthy (it then takes no traffic)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HashOn(Model):
    """What ``ring_hash`` hashes: exactly one of a header, a cookie, or the caller's IP address."""

    header: Annotated[str | None, HEADER_NAME] = None
    """The value of this request header (its first field); stored lower-case."""
    cookie: Annotated[str | None, COOKIE_NAME] = None
    """The value of this cookie (case-sensitive name)."""
    source_ip: Annotated[bool, BOOLEAN] = False
    """The address of the connection the request came in on."""

    def check(self, given: Mapping[str, Any]) -> None:
        chosen = [name for name in ("header", "cookie") if getattr(self, name) is not None]
        chosen += ["source_ip"] if self.source_ip else []
        if len(chosen) != 1:
            raise ValueError("set exactly one of header, cookie, source_ip: true")


LoadBalancer = Literal["round_robin", "least_request", "random", "ring_hash"]
Protocol = Literal["http1", "http2", "auto", "tcp"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig(Model):
    """``kind: Service``: an upstream service this workload calls."""

    name: Name
    hosts: Annotated[tuple[str, ...], items(HOST, distinct=True)] = ()
    """Host names (lower-case, no port) that select this service; defaults to ``(name,)``.
    An explicit empty list is allowed: the service is then reachable only through Routes."""
    endpoints: Annotated[tuple[EndpointConfig, ...], items(nested(EndpointConfig), non_empty=True)]
    dns_refresh: Annotated[float, bounded(DURATION, gt=0)] = 5 * SECONDS
    """How often DNS-named endpoints are re-resolved."""
    tls: Annotated[ServiceTls, nested(ServiceTls)] = ServiceTls()
    """How to secure connections to the endpoints; mesh mutual TLS by default."""
    load_balancer: Annotated[LoadBalancer, one_of(*get_args(LoadBalancer))] = "least_request"
    """How an endpoint is chosen among the available ones (healthy and not ejected)."""
    hash_on: Annotated[HashOn | None, nested(HashOn)] = None
    """``ring_hash`` only, and required by it: the request key hashed onto the ring."""
    protocol: Annotated[Protocol, one_of(*get_args(Protocol))] = "auto"
    """HTTP version to the endpoints: http1, http2 (h2c in plaintext), or auto (the default: ALPN
    decides on TLS, so two sidecars speak HTTP/2 and multiplex; plaintext is http1). WebSockets
    always take a dedicated HTTP/1.1 connection. ``tcp``: opaque TCP, bytes carried as they are
    (over the tunnel between sidecars with mutual TLS), no HTTP processing."""
    addresses: Annotated[tuple[str, ...], items(IP, distinct=True)] = ()
    """Virtual IPs the service is dialed at (a Kubernetes ClusterIP): transparent capture matches a
    connection's original destination against them."""
    ports: Annotated[tuple[int, ...], items(PORT, distinct=True)] = ()
    """Ports the service is dialed on (empty: any) with ``addresses``; for ``tcp`` the first one is
    also the app port the peer sidecar forwards to."""
    listen: Annotated[Address | None, ADDRESS] = None
    """``tcp`` only: a local address the app dials instead of the service (explicit mode)."""
    timeouts: Annotated[Timeouts, nested(Timeouts)] = Timeouts()
    retries: Annotated[Retries, nested(Retries)] = Retries()
    circuit_breaker: Annotated[CircuitBreaker, nested(CircuitBreaker)] = CircuitBreaker()
    outlier_detection: Annotated[OutlierDetection, nested(OutlierDetection)] = OutlierDetection()
    """Passive health, always on: endpoints that keep failing are ejected for a while."""
    health_check: Annotated[HealthCheck | None, nested(HealthCheck)] = None
    """Active health checks; ``None`` (the default): none, outlier detection alone judges endpoints.
    For a ``tcp`` service a check is a connection made (TCP and TLS, the peer's identity checked);
    ``path`` does not apply."""

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "hosts" not in data and data.get("protocol") == "tcp":  # no Host to match: by address only
            return {**data, "hosts": []}
        if "hosts" not in data:  # left out or null: the service's own name, when that is valid
            try:
                return {**data, "hosts": [parse_name(data.get("name"))]}
            except ValueError:
                pass
        return data

    def check(self, given: Mapping[str, Any]) -> None:
        if self.load_balancer == "ring_hash" and self.hash_on is None:
            raise ValidationError([FieldError(("hash_on",), "ring_hash needs hash_on (header, cookie or source_ip)")])
        if self.hash_on is not None and self.load_balancer != "ring_hash":
            raise ValidationError([FieldError(("hash_on",), "hash_on applies to load_balancer ring_hash only")])
        errors = []
        if self.listen is not None and self.protocol != "tcp":
            errors.append(FieldError(("listen",), "listen applies to protocol tcp only"))
        if self.protocol == "tcp":
            if self.hosts and given.get("hosts"):
                errors.append(FieldError(("hosts",), "a tcp service is matched by address, not by Host"))
            if self.hash_on is not None and not self.hash_on.source_ip:
                errors.append(FieldError(("hash_on",), "a tcp service can hash on source_ip only (it has no headers)"))
        if errors:
            raise ValidationError(errors)


# --------------------------------------------------------------------------------------------------
# kind: Route
# --------------------------------------------------------------------------------------------------


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """A mapping of header names to values, as ``(lower-case name, value)`` pairs."""
    if isinstance(value, tuple):  # built in code, already pairs
        pairs = []
        for index, pair in enumerate(value):
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
                raise ValidationError([FieldError((index,), "expected a (name, value) pair of strings")])
            pairs.append((pair[0].lower(), pair[1]))
        return tuple(pairs)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {show(value)}")
    errors = [
        FieldError((str(name),), f"expected a string, got {show(part)}" + _quote_hint(part))
        for name, header_value in value.items()
        for part in (name, header_value)
        if not isinstance(part, str)
    ]
    if errors:
        raise ValidationError(errors)
    result: dict[str, str] = {}
    for name, header_value in value.items():
        lower = name.lower()
        if not _HEADER_NAME_RE.fullmatch(lower):
            raise ValueError(f"invalid header name {show(name)}")
        if lower in result:
            raise ValueError(f"header {lower!r} listed twice")
        result[lower] = header_value
    return tuple(result.items())


def _quote_hint(value: object) -> str:
    """For a number where a string belongs: how to write it as one."""
    return f' (quote it: "{show(value)}")' if isinstance(value, int | float) else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch(Model):
    """What a request must look like for a rule to apply; an empty match matches every request."""

    path_prefix: Annotated[str | None, HTTP_PATH] = None
    """Matches whole path segments: ``/api`` matches ``/api`` and ``/api/x``, not ``/apix``."""
    path: Annotated[str | None, HTTP_PATH] = None
    """Matches this exact path."""
    headers: Annotated[tuple[tuple[str, str], ...], plain(_headers, dump=dict)] = ()
    """``(name, value)`` pairs that must all be present with exactly these values; names lower-case."""

    def check(self, given: Mapping[str, Any]) -> None:
        if self.path is not None and self.path_prefix is not None:
            raise ValueError("set either path or path_prefix, not both")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTarget(Model):
    """A service a rule sends to, with its percentage of the rule's traffic."""

    service: Name
    weight: Annotated[int, bounded(INTEGER, ge=0, le=100)] = 100
    """Percentage 0..100; may be left out only when the rule has a single target."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule(Model):
    """One rule of a route: the first rule whose ``match`` fits a request decides where it goes."""

    match: Annotated[RouteMatch, nested(RouteMatch)] = RouteMatch()
    to: Annotated[tuple[RouteTarget, ...], items(nested(RouteTarget), non_empty=True)]
    timeout: Annotated[float | None, DURATION] = None
    """Overrides the target service's ``timeouts.request``."""

    def check(self, given: Mapping[str, Any]) -> None:
        if len(self.to) > 1:
            missing = [
                FieldError(("to", index, "weight"), "field required (to has several entries)")
                for index, target in enumerate(given["to"])
                if isinstance(target, Mapping) and target.get("weight") is None
            ]
            if missing:
                raise ValidationError(missing)
        total = sum(target.weight for target in self.to)
        if total != 100:
            raise ValidationError([FieldError(("to",), f"weights add up to {total}, must be 100")])


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig(Model):
    """``kind: Route``: rules for one host (matched without port, case-insensitively)."""

    host: Host
    rules: Annotated[tuple[RouteRule, ...], items(nested(RouteRule), non_empty=True)]


KINDS: Mapping[str, type[Model]] = {
    "Sidecar": SidecarConfig,
    "Service": ServiceConfig,
    "Route": RouteConfig,
}
"""The model of each document ``kind``."""
