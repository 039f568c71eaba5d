"""Outbound routing: from a request's host (and path and headers) to one upstream service.

A `Router` is built once per config snapshot. Services with `protocol: tcp` take no part: they carry
no HTTP, and are matched by a connection's original destination only (`listeners/outbound.py`).
Hosts are matched without port, case-insensitively;
a Route for a host wins over a Service listing that host. A Route's rules are tried in order and
the first match wins; `path_prefix` matches whole path segments (Gateway API), `path` exactly;
header matches are exact values. A rule's targets are picked by weight (canary splits).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate

from ..config.schema import RouteConfig, RouteRule, ServiceConfig
from ..http.errors import NoRoute
from ..http.message import Request


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a request goes: a service name and, when a route says so, its own timeout."""

    service: str
    timeout: float | None = None


class CompiledRule:
    __slots__ = ("cum_weights", "destinations", "exact", "headers", "prefix")

    def __init__(self, rule: RouteRule) -> None:
        match = rule.match
        self.exact = match.path.encode() if match.path is not None else None
        prefix = match.path_prefix.encode() if match.path_prefix is not None else None
        self.prefix = prefix.rstrip(b"/") if prefix is not None else None  # "/" becomes b"": all
        self.headers = tuple((name.encode(), value.encode()) for name, value in match.headers)
        targets = [t for t in rule.to if t.weight > 0] or list(rule.to)
        self.destinations = [Destination(t.service, rule.timeout) for t in targets]
        self.cum_weights = list(accumulate(t.weight for t in targets))

    def matches(self, request: Request) -> bool:
        path = request.path
        if self.exact is not None and path != self.exact:
            return False
        prefix = self.prefix
        if prefix and not (path == prefix or (path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] == b"/")):
            return False
        if self.headers:
            headers = request.headers
            for name, value in self.headers:
                if headers.get(name) != value:
                    return False
        return True

    def pick(self) -> Destination:
        destinations = self.destinations
        if len(destinations) == 1:
            return destinations[0]
        total = self.cum_weights[-1]
        if total <= 0:
            return destinations[0]
        return destinations[bisect_right(self.cum_weights, random.random() * total)]


class Router:
    def __init__(self, services: Mapping[str, ServiceConfig], routes: Mapping[str, RouteConfig]) -> None:
        self.by_host: dict[str, Destination | tuple[CompiledRule, ...]] = {}
        for service in services.values():
            if service.protocol == "tcp":  # opaque TCP: matched by original destination only
                continue
            plain = Destination(service.name)
            for host in service.hosts:
                self.by_host[host.lower()] = plain
        for route in routes.values():
            self.by_host[route.host.lower()] = tuple(CompiledRule(rule) for rule in route.rules)

    def destination(self, request: Request) -> Destination:
        entry = self.by_host.get(request.host)
        if entry is None:
            raise NoRoute(detail=f"host {request.host!r}")
        if isinstance(entry, Destination):
            return entry
        for rule in entry:
            if rule.matches(request):
                return rule.pick()
        raise NoRoute(detail=f"no rule of route {request.host!r} matches")
