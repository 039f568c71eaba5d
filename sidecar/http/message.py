"""The one message model every layer speaks: Headers, Request, Response, and the Body protocol.

Adapters in `transport/` turn wire bytes into these values and back; nothing above the adapters
knows which HTTP version carried a message. Header names keep the casing the peer sent (HTTP/1.1
apps may depend on it) next to a lower-cased copy used for every lookup, so lookups never lower-case
on the hot path. Pure data: no trio import here.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

# One header field: (lower-cased name, name as sent, value). Names and values are bytes.
Field = tuple[bytes, bytes, bytes]


class Headers:
    """An ordered multi-map of header fields with case-insensitive lookup."""

    __slots__ = ("fields",)

    def __init__(self, fields: list[Field] | None = None) -> None:
        self.fields: list[Field] = fields if fields is not None else []

    @classmethod
    def of(cls, pairs: Iterable[tuple[bytes, bytes]]) -> Headers:
        return cls([(name.lower(), name, value) for name, value in pairs])

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The first value of `name` (lower-case), or `default`."""
        for lname, _, value in self.fields:
            if lname == name:
                return value
        return default

    def get_all(self, name: bytes) -> list[bytes]:
        return [value for lname, _, value in self.fields if lname == name]

    def __contains__(self, name: object) -> bool:
        return any(lname == name for lname, _, _ in self.fields)

    def add(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), name, value))

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every `name` field by one, kept at the first one's place (else appended)."""
        lname = name.lower()
        out: list[Field] = []
        placed = False
        for field in self.fields:
            if field[0] == lname:
                if not placed:
                    out.append((lname, field[1], value))
                    placed = True
            else:
                out.append(field)
        if not placed:
            out.append((lname, name, value))
        self.fields = out

    def remove(self, names: frozenset[bytes] | builtins.set[bytes]) -> None:
        """Drop every field whose lower-case name is in `names`."""
        self.fields = [f for f in self.fields if f[0] not in names]

    def items(self) -> list[tuple[bytes, bytes]]:
        """(lower-case name, value) pairs, as HTTP/2 wants them."""
        return [(lname, value) for lname, _, value in self.fields]

    def copy(self) -> Headers:
        return Headers(list(self.fields))

    def __len__(self) -> int:
        return len(self.fields)

    def __repr__(self) -> str:
        return f"Headers({[(raw, value) for _, raw, value in self.fields]!r})"


class Body(Protocol):
    """A message body: a stream of byte chunks pulled one at a time (that is the backpressure).

    `length` is the total size when known (Content-Length), else None. `read()` returns b"" at the
    end; after that `trailers` holds the trailer fields, if any. `aclose()` releases what the body
    holds (an upstream connection, say); closing before the end abandons the rest.
    """

    length: int | None
    trailers: Headers | None

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class EmptyBody:
    """A body with no bytes."""

    __slots__ = ()
    length: int | None = 0
    trailers: Headers | None = None

    async def read(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        return None


EMPTY_BODY = EmptyBody()


class BytesBody:
    """A body held in memory: local replies and small test bodies only."""

    __slots__ = ("_data", "length", "trailers")

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data
        self.length: int | None = len(data)
        self.trailers: Headers | None = None

    async def read(self) -> bytes:
        data, self._data = self._data, None
        return data or b""

    async def aclose(self) -> None:
        self._data = None


@dataclass(slots=True)
class ConnectionInfo:
    """What the transport knows about the downstream connection a request came in on."""

    peer_host: str
    peer_port: int
    tls: bool = False
    peer_identity: str | None = None  # verified SPIFFE ID of the caller, when mTLS
    # Where the caller was going, when transparent capture redirected the connection here (the
    # original destination's IP and port); None on a connection made to the listener itself.
    original_dst: tuple[str, int] | None = None


class ExchangeObserver(Protocol):
    """What watches one request for telemetry (`telemetry/record.py`): the upstream call reports
    each try, the protocol server reports the response once written (or given up)."""

    service: str  # the upstream service (outbound, once routed) or this sidecar's own (inbound)
    reason: str | None  # the reason code, when the sidecar made the reply itself

    def try_started(self, cluster: Any, endpoint: Any, attempt: int) -> None: ...

    def try_failed(self, error: Any) -> None: ...

    def try_abandoned(self, status: int) -> None: ...

    def response_sent(self, status: int, bytes_out: int, reason: str | None = None) -> None: ...


class Request:
    """One HTTP request, version-independent.

    `target` is origin-form (path and query). `authority` is the Host (or :authority) as sent;
    `host` is that authority without port, lower-cased, for routing. `task_nursery` is a nursery
    owned by the downstream server that lives until the response is fully written: upstream
    clients start their request-body pump in it (None when the request has no body).
    `websocket` is a class-level flag (see `WebSocketRequest`), so it costs ordinary requests nothing.
    `observer` is the request's telemetry record, when a layer opened one.
    """

    websocket: ClassVar[bool] = False

    __slots__ = (
        "authority",
        "body",
        "conn",
        "headers",
        "host",
        "http_version",
        "method",
        "observer",
        "path",
        "scheme",
        "target",
        "task_nursery",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        authority: bytes | None,
        headers: Headers,
        body: Body,
        conn: ConnectionInfo,
        *,
        http_version: str = "1.1",
        scheme: bytes = b"http",
    ) -> None:
        self.method = method
        self.target = target
        self.authority = authority
        self.headers = headers
        self.body = body
        self.conn = conn
        self.http_version = http_version
        self.scheme = scheme
        q = target.find(b"?")
        self.path: bytes = target if q < 0 else target[:q]
        self.host: str = host_of(authority) if authority else ""
        self.task_nursery: Any = None
        self.observer: ExchangeObserver | None = None


class WebSocketRequest(Request):
    """A request to switch its HTTP/1.1 connection to WebSocket (`http/websocket.py` says which
    requests are). The forwarding layer keeps its Upgrade, the upstream call sends it on a dedicated
    HTTP/1.1 connection, and a `101` answer turns the two connections into one tunnel."""

    __slots__ = ()
    websocket: ClassVar[bool] = True


class Response:
    """One HTTP response, version-independent."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, headers: Headers, body: Body = EMPTY_BODY, reason: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason


_HOSTS: dict[bytes, str] = {}  # authority -> host; a mesh sees few distinct authorities
_HOSTS_MAX = 4096


def host_of(authority: bytes) -> str:
    """The host part of an authority, without port, lower-cased (`[::1]:80` gives `[::1]`)."""
    host = _HOSTS.get(authority)
    if host is None:
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        host = _HOSTS[authority] = _host_of(authority)
    return host


def _host_of(authority: bytes) -> str:
    text = authority.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    colon = text.rfind(":")
    if colon >= 0 and text[colon + 1 :].isdigit():
        text = text[:colon]
    return text.rstrip(".")
