"""Value notations the config files use: durations, sizes, addresses, hosts and SPIFFE IDs.

Each ``parse_*`` reads one notation and raises ``ValueError`` with an operator-facing message for
anything else; each ``format_*`` writes a value back so that parsing it gives the same value.
Durations are float seconds (``250ms``, ``1.5s``, ``2m``, ``1h``), sizes int bytes (``1024``,
``64KiB``, ``1MiB``, ``2GiB``), addresses ``Address`` (``127.0.0.1:8080``, ``[::1]:8080``), SPIFFE IDs
strings of the shape ``spiffe://TRUST-DOMAIN/PATH``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

from .fields import show

_DURATION_UNITS: dict[str, tuple[int, int]] = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1)}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ms|s|m|h)")
_DURATION_HINT = "use e.g. 250ms, 1s, 2m"

_SIZE_UNITS: dict[str, int] = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_SIZE_RE = re.compile(r"([0-9]+) ?(KiB|MiB|GiB)?")
_SIZE_HINT = "use bytes, or e.g. 64KiB, 1MiB, 2GiB"

_DNS_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NAME_RE = re.compile(r"\S+")

# SPIFFE IDs as `sidecar certs issue` accepts them: a lower-case trust domain, then one or more
# non-empty path segments (no trailing '/'). A pattern may also hold '*', which globs within a segment.
_SPIFFE_SEGMENT = r"[A-Za-z0-9._~!$&'()+,;=:@%-]"
_SPIFFE_ID_RE = re.compile(rf"spiffe://[a-z0-9._-]+(?:/{_SPIFFE_SEGMENT}+)+")
_SPIFFE_PATTERN_RE = re.compile(rf"spiffe://[a-z0-9._-]+(?:/(?:{_SPIFFE_SEGMENT}|\*)+)+")


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
    text = repr(seconds)  # the shortest exact decimal, but it may use an exponent: spell that out
    if "e" in text:
        from decimal import Decimal  # imported only here: it is rarely needed and costs memory

        text = format(Decimal(text), "f")
    return f"{text}s"


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


def parse_name(value: object) -> str:
    """A name (of a service): a non-empty string without spaces."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {show(value)}")
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"invalid name {show(value)} (must be non-empty, without spaces)")
    return value


def parse_spiffe_id(value: object, *, pattern: bool = False) -> str:
    """A SPIFFE ID ``spiffe://TRUST-DOMAIN/PATH``, returned as written; only its shape is checked.

    With ``pattern``, a path segment may contain ``*`` (matching is the runtime's business).
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a SPIFFE ID, got {show(value)}")
    regex = _SPIFFE_PATTERN_RE if pattern else _SPIFFE_ID_RE
    if regex.fullmatch(value) and not any(part in (".", "..") for part in value.split("/")[3:]):
        return value
    if not pattern and "*" in value and _SPIFFE_PATTERN_RE.fullmatch(value):
        raise ValueError(f"invalid SPIFFE ID {show(value)} (one exact ID: '*' patterns belong in inbound.allow)")
    expected = "spiffe://TRUST-DOMAIN/PATH" + ("; '*' globs a path segment" if pattern else "")
    raise ValueError(f"invalid SPIFFE ID {show(value)} (expected {expected})")


def parse_server_name(value: object) -> str:
    """A TLS server name (SNI and the name verified): a DNS name or an IP address, lower-case."""
    if not isinstance(value, str):
        raise ValueError(f"expected a host name, got {show(value)}")
    name = value.lower().removesuffix(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or len(name) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"invalid server name {show(value)} (expected a host name such as api.example.com)")
    return name


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
