"""Typed, immutable models of the three config kinds: Sidecar, Service and Route.

This module owns what a valid value *is*: the field names, their defaults, and the parsing of the
value notations the files use (durations such as ``250ms``, sizes such as ``64KiB``, addresses such
as ``127.0.0.1:8080``). It knows nothing about files, YAML or line numbers; ``loader.py`` feeds it
plain Python data and turns its ``pydantic.ValidationError``s into ``FILE:LINE`` issues.

Rules that hold for every model here:

- Unknown fields are errors (``extra="forbid"``), and every model is frozen.
- A field explicitly set to ``null`` counts as not set, so its default applies (``inbound: null``
  therefore means "no inbound listener", exactly as leaving ``inbound`` out does).
- Integers are strict: ``true`` or ``"5"`` is not an integer.
- Durations are stored as float seconds, sizes as int bytes, addresses as ``Address``. In a file a
  duration must be a string with a unit (validate with ``context=FILE_CONTEXT``); code building
  models directly may pass plain float seconds.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

# --------------------------------------------------------------------------------------------------
# Value notations: durations, sizes, addresses, hosts.
# --------------------------------------------------------------------------------------------------

_DURATION_UNITS: dict[str, tuple[int, int]] = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1)}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ms|s|m|h)")
_DURATION_HINT = "use e.g. 250ms, 1s, 2m"

_SIZE_UNITS: dict[str, int] = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_SIZE_RE = re.compile(r"([0-9]+) ?(KiB|MiB|GiB)?")
_SIZE_HINT = "use bytes, or e.g. 64KiB, 1MiB, 2GiB"

_DNS_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_NAME_RE = re.compile(r"\S+")


def show(value: object) -> str:
    """Render a config value for an error message, the way it would look in YAML."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def parse_duration(value: object) -> float:
    """Parse ``<number><unit>`` (unit ``ms``, ``s``, ``m`` or ``h``) into float seconds.

    Raises ``ValueError`` with an operator-facing message for anything else, including bare numbers
    (a duration always names its unit) and negative values.
    """
    if not isinstance(value, str):
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"invalid duration {show(value)} (a duration needs a unit: {_DURATION_HINT})")
        raise ValueError(f"invalid duration {show(value)} ({_DURATION_HINT})")
    match = _DURATION_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid duration {show(value)} ({_DURATION_HINT})")
    number, unit = match.groups()
    multiplier, divisor = _DURATION_UNITS[unit]
    seconds = float(number) * multiplier / divisor  # one rounding at most: "250ms" is exactly 0.25
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {show(value)} (too large)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest notation ``parse_duration`` reads back as exactly ``seconds``: ``250ms``, ``1.5s``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    millis = seconds * 1000
    if 0 < seconds < 1 and millis.is_integer() and millis / 1000 == seconds:
        return f"{int(millis)}ms"
    if seconds.is_integer():
        return f"{int(seconds)}s"
    # repr() is the shortest exact decimal, but may use an exponent; "f" spells it out.
    return f"{format(Decimal(repr(seconds)), 'f')}s"


def parse_size(value: object) -> int:
    """Parse a size into bytes: a non-negative integer, or a string such as ``1024``, ``64KiB``, ``2GiB``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"invalid size {show(value)} (must not be negative)")
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid size {show(value)} ({_SIZE_HINT})")
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid size {show(value)} ({_SIZE_HINT})")
    number, unit = match.groups()
    if len(number) > 30:
        raise ValueError(f"invalid size {show(value)} (too large)")
    return int(number) * (_SIZE_UNITS[unit] if unit else 1)


def format_size(size: int) -> str:
    """The notation of ``size`` bytes in the largest exact unit: ``64KiB``, ``1MiB``, ``1000``."""
    if size < 0:
        raise ValueError(f"cannot format size {size!r}")
    for unit, factor in reversed(_SIZE_UNITS.items()):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def normalize_host(value: object) -> str:
    """A host as requests are matched against it: lower-case, without a ``:port`` suffix."""
    if not isinstance(value, str):
        raise ValueError(f"invalid host {show(value)} (expected a string)")
    host = value.strip().lower()
    if host.startswith("["):
        host = host.partition("]")[0] + "]" if "]" in host else host
    elif host.count(":") == 1 and host.rpartition(":")[2].isdigit():
        host = host.rpartition(":")[0]
    if not host or not _NAME_RE.fullmatch(host) or "/" in host:
        raise ValueError(f"invalid host {show(value)}")
    return host


def _check_host_part(host: str, text: str) -> str:
    """Validate the host part of an address; returns it in canonical form."""
    if not host:
        raise ValueError(f"invalid address {show(text)} (missing host, e.g. 127.0.0.1:8080)")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"invalid address {show(text)} (bad IPv4 address {host!r})") from None
    name = host.lower().removesuffix(".")
    if len(name) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"invalid address {show(text)} (bad host name {host!r})")
    return name


@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` pair. ``host`` is an IPv4 address, a DNS name, or an IPv6 address without brackets."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("address host must not be empty")
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port!r} out of range 1..65535")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: object) -> Address:
        """Parse ``host:port`` (IPv6 in brackets: ``[::1]:8080``); ``ValueError`` says what is wrong."""
        if not isinstance(text, str):
            raise ValueError(f"invalid address {show(text)} (expected host:port, e.g. 127.0.0.1:8080)")
        if text.startswith("["):
            inside, close, rest = text[1:].partition("]")
            if not close or not rest.startswith(":"):
                raise ValueError(f"invalid address {show(text)} (expected [IPv6]:port, e.g. [::1]:8080)")
            try:
                host = str(ipaddress.IPv6Address(inside))
            except ValueError:
                raise ValueError(f"invalid address {show(text)} (bad IPv6 address {inside!r})") from None
            port_text = rest[1:]
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(f"invalid address {show(text)} (expected host:port, e.g. 127.0.0.1:8080)")
            if ":" in host:
                raise ValueError(f"invalid address {show(text)} (put IPv6 addresses in brackets: [::1]:8080)")
            host = _check_host_part(host, text)
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 and 1 <= int(port_text) <= 65535):
            raise ValueError(f"invalid address {show(text)} (port must be 1..65535)")
        return cls(host, int(port_text))


def _address(value: object) -> Address:
    return value if isinstance(value, Address) else Address.parse(value)


FILE_CONTEXT: Mapping[str, bool] = MappingProxyType({"from_file": True})
"""Validation context for data read from a config file: durations there must be strings with a unit."""


def _duration(value: object, info: ValidationInfo) -> float:
    # Code may pass float seconds (``Timeouts(connect=0.5)``); a file must name the unit.
    from_file = bool(info.context and info.context.get("from_file"))
    if (
        not from_file
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        return float(value)
    return parse_duration(value)


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {show(value)}")
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"invalid name {show(value)} (must be non-empty, without spaces)")
    return value


def _path(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a path starting with '/', got {show(value)}")
    if not value.startswith("/"):
        raise ValueError(f"invalid path {show(value)} (must start with '/')")
    return value


AddressField = Annotated[Address, PlainValidator(_address), PlainSerializer(str, return_type=str)]
"""An ``Address`` given as ``host:port``; serialized back to that text."""
Duration = Annotated[float, PlainValidator(_duration), PlainSerializer(format_duration, return_type=str)]
"""Float seconds given as ``250ms``/``1s``/``2m``/``1h``; serialized back to that notation."""
Size = Annotated[int, PlainValidator(parse_size), PlainSerializer(format_size, return_type=str)]
"""Int bytes given as ``1024`` or ``64KiB``/``1MiB``/``2GiB``; serialized back to that notation."""
Name = Annotated[str, PlainValidator(_name)]
Host = Annotated[str, PlainValidator(normalize_host)]
HttpPath = Annotated[str, PlainValidator(_path)]

SECONDS = 1.0
KiB = 1 << 10


class _Model(BaseModel):
    """Base of every config model: frozen, unknown fields forbidden, ``null`` means "not set"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if not (v is None and k in cls.model_fields)}
        return data


# --------------------------------------------------------------------------------------------------
# kind: Sidecar
# --------------------------------------------------------------------------------------------------


class InboundConfig(_Model):
    """The inbound listener: accepts callers from the mesh and forwards to the local app."""

    listen: AddressField = Address("0.0.0.0", 15006)
    """Where the inbound listener binds."""
    app: AddressField = Address("127.0.0.1", 8080)
    """The local app that inbound requests are forwarded to."""
    app_protocol: Literal["http1"] = "http1"
    """How to speak to the app (only HTTP/1.1 so far)."""
    app_idle_timeout: Duration = 4 * SECONDS
    """Pooled connections to the app close after this long idle (below common app keep-alives)."""


class OutboundConfig(_Model):
    """The outbound listener: the local app sends its plain HTTP calls here."""

    listen: AddressField = Address("127.0.0.1", 15001)


class AdminConfig(_Model):
    """The admin listener: /ready, /live, /metrics, /config, /clusters, /drain."""

    listen: AddressField = Address("127.0.0.1", 15000)


class Limits(_Model):
    """Request limits, applied on both listeners."""

    max_request_headers: Size = 64 * KiB
    """Largest request header block, in bytes (431 beyond it)."""
    max_request_body: Size = 0
    """Largest request body, in bytes (413 beyond it); 0 means unlimited (streamed)."""
    header_read_timeout: Duration = 10 * SECONDS
    """Time allowed from a request's first byte to the end of its header block."""


class SidecarConfig(_Model):
    """``kind: Sidecar``: this workload's own proxy settings. Exactly one per config directory."""

    service: Name
    """This workload's service name (also the OTel ``service.name``)."""
    inbound: InboundConfig | None = None
    """The inbound listener; ``None`` (section absent) means no inbound listener: a pure client."""
    outbound: OutboundConfig = OutboundConfig()
    admin: AdminConfig = AdminConfig()
    limits: Limits = Limits()
    drain_timeout: Duration = 20 * SECONDS
    """On drain, exit at the latest after this long."""


# --------------------------------------------------------------------------------------------------
# kind: Service
# --------------------------------------------------------------------------------------------------


class EndpointConfig(_Model):
    """One static endpoint of a service: an IP address, or a DNS name re-resolved every ``dns_refresh``."""

    address: AddressField
    weight: Annotated[StrictInt, Field(ge=1)] = 1
    """Relative share of traffic for this endpoint."""


class Timeouts(_Model):
    """Upstream timeouts of a service."""

    connect: Duration = 1 * SECONDS
    """Bound on establishing a connection (TCP and TLS) to one endpoint."""
    request: Duration = 15 * SECONDS
    """Bound on a whole request, from sending to the end of the response head."""
    idle: Duration = 60 * SECONDS
    """Pooled upstream connections close after this long idle."""


LoadBalancer = Literal["round_robin", "least_request", "random"]


class ServiceConfig(_Model):
    """``kind: Service``: an upstream service this workload calls."""

    name: Name
    hosts: tuple[Host, ...] = ()
    """Host names (lower-case, no port) that select this service; defaults to ``(name,)``.
    An explicit empty list is allowed: the service is then reachable only through Routes."""
    endpoints: Annotated[tuple[EndpointConfig, ...], Field(min_length=1)]
    dns_refresh: Annotated[Duration, Field(gt=0)] = 5 * SECONDS
    """How often DNS-named endpoints are re-resolved."""
    load_balancer: LoadBalancer = "least_request"
    timeouts: Timeouts = Timeouts()

    @model_validator(mode="before")
    @classmethod
    def _default_hosts(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("hosts") is None:
            name = data.get("name")
            if isinstance(name, str) and _NAME_RE.fullmatch(name):
                return {**data, "hosts": [name]}
        return data

    @field_validator("hosts")
    @classmethod
    def _unique_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(hosts))


# --------------------------------------------------------------------------------------------------
# kind: Route
# --------------------------------------------------------------------------------------------------

_HEADERS_INPUT: TypeAdapter[dict[str, str]] = TypeAdapter(dict[StrictStr, StrictStr])


class RouteMatch(_Model):
    """What a request must look like for a rule to apply; an empty match matches every request."""

    path_prefix: HttpPath | None = None
    """Matches whole path segments: ``/api`` matches ``/api`` and ``/api/x``, not ``/apix``."""
    path: HttpPath | None = None
    """Matches this exact path."""
    headers: tuple[tuple[str, str], ...] = ()
    """``(name, value)`` pairs that must all be present with exactly these values; names lower-case."""

    @field_validator("headers", mode="before")
    @classmethod
    def _headers_from_mapping(cls, value: Any) -> Any:
        if isinstance(value, tuple):  # built in code, already pairs: the field's own schema checks them
            return tuple(
                (pair[0].lower(), *pair[1:]) if isinstance(pair, tuple) and pair and isinstance(pair[0], str)
                else pair
                for pair in value
            )
        pairs = _HEADERS_INPUT.validate_python(value)  # its errors point at the offending header
        result: dict[str, str] = {}
        for name, header_value in pairs.items():
            lower = name.lower()
            if not _HEADER_NAME_RE.fullmatch(lower):
                raise ValueError(f"invalid header name {show(name)}")
            if lower in result:
                raise ValueError(f"header {lower!r} listed twice")
            result[lower] = header_value
        return tuple(result.items())

    @field_serializer("headers")
    def _headers_as_mapping(self, headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
        return dict(headers)

    @model_validator(mode="after")
    def _one_path_kind(self) -> Self:
        if self.path is not None and self.path_prefix is not None:
            raise ValueError("set either path or path_prefix, not both")
        return self


class RouteTarget(_Model):
    """A service a rule sends to, with its percentage of the rule's traffic."""

    service: Name
    weight: Annotated[StrictInt, Field(ge=0, le=100)] = 100
    """Percentage 0..100; may be left out only when the rule has a single target."""


class RouteRule(_Model):
    """One rule of a route: the first rule whose ``match`` fits a request decides where it goes."""

    match: RouteMatch = RouteMatch()
    to: Annotated[tuple[RouteTarget, ...], Field(min_length=1)]
    timeout: Duration | None = None
    """Overrides the target service's ``timeouts.request``."""

    @model_validator(mode="after")
    def _weights_add_up(self) -> Self:
        if len(self.to) > 1:
            missing = [
                InitErrorDetails(
                    type=PydanticCustomError("weight_required", "field required (to has several entries)"),
                    loc=("to", index, "weight"),
                    input=None,
                )
                for index, target in enumerate(self.to)
                if "weight" not in target.model_fields_set
            ]
            if missing:
                raise ValidationError.from_exception_data(type(self).__name__, missing)
        total = sum(target.weight for target in self.to)
        if total != 100:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("weights", f"weights add up to {total}, must be 100"),
                        loc=("to",),
                        input=None,
                    )
                ],
            )
        return self


class RouteConfig(_Model):
    """``kind: Route``: rules for one host (matched without port, case-insensitively)."""

    host: Host
    rules: Annotated[tuple[RouteRule, ...], Field(min_length=1)]


KINDS: Mapping[str, type[BaseModel]] = {
    "Sidecar": SidecarConfig,
    "Service": ServiceConfig,
    "Route": RouteConfig,
}
"""The model of each document ``kind``."""
