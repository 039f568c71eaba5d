"""Runtime state of upstream services, keyed by service name and endpoint address.

Config snapshots come and go; what must outlive them lives here: each endpoint (an `Endpoint`, see
`endpoint.py`: its connection pool, in-flight count, health from active checks and ejection state
from outlier detection), and each service's circuit-breaker counts and retry budget. `apply()` takes
a new snapshot and keeps the state of every endpoint that is still there; endpoints that vanish are
marked removed, their idle connections closed, and their in-flight requests finish undisturbed.

An endpoint is *available* when it is not removed, healthy and not ejected; only available endpoints
are picked, and when none is left `pick()` raises `NoHealthyUpstream` at once (no panic mode, see
docs: behaviour/resilience.md). The balancer is built over the available endpoints and rebuilt only
when availability or the endpoint set changes, so a pick costs what it did before health existed.
`record()` feeds each try's outcome to outlier detection in O(1). The policies act on their
`Cluster` through the protocols they define (`outlier.OutlierCluster`, `health.CheckedCluster`): its
name, its endpoints, and `availability_changed()`.

The registry's `run()` task re-resolves DNS endpoints and sweeps idle pooled connections; its nursery
also runs each service's policy tasks (outlier returns and reviews, health checks), restarted when a reload
changes those policies and stopped when the service goes away.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from ..config.schema import Address, HashOn, HealthCheck, InboundConfig, OutlierDetection, ServiceConfig
from ..http.errors import NoHealthyUpstream
from ..http.message import Request
from ..logger import get_logger
from .balancer import Balancer, make_balancer
from .breaker import UNLIMITED, Breaker, Thresholds
from .endpoint import Endpoint, EndpointStatistics
from .health import HealthChecker
from .outlier import OutlierDetector
from .pool import UpstreamTls
from .retry import RetryBudget, RetryPolicy
from .ring import HashRing, RingHash, key_reader

log = get_logger("sidecar.upstream")

SWEEP_INTERVAL = 0.5  # how often idle pooled connections past their idle timeout are closed
NO_TIMEOUT = float("inf")
# A WebSocket to the local app closes after this long without a byte either way. The app's pooled-
# connection idle (`inbound.app_idle_timeout`, a few seconds to beat app keep-alives) is far too short
# for a tunnel, and the calling sidecar enforces its Service's `timeouts.idle` on the same tunnel
# anyway: this is the default of that setting, so a default mesh closes a silent tunnel at the same time
# on both hops, and one that allows longer is cut at most this long after its last byte.
APP_WEBSOCKET_IDLE_TIMEOUT = 60.0
# Connecting to the local app over loopback fails at once when it is down (refused); it only takes
# long when the app's accept backlog is full and the kernel drops the SYN, which is resent after 1 s.
# A burst the app is slow to accept then waits for it, rather than failing at the first resend.
APP_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """What the request path needs from a service's config, in seconds."""

    connect_timeout: float
    request_timeout: float
    idle_timeout: float
    load_balancer: str
    dns_refresh: float
    targets: tuple[tuple[Address, int], ...]  # configured (address, weight) pairs, before DNS
    tls: UpstreamTls | None = None  # None: plaintext (`tls.mode: disabled`, or the local app)
    protocol: str = "http1"  # http1 | http2 | auto
    websocket_idle_timeout: float = APP_WEBSOCKET_IDLE_TIMEOUT  # an upgraded tunnel with no traffic closes
    hash_on: HashOn | None = None  # ring_hash: the request key
    outlier_detection: OutlierDetection | None = None  # None: no ejections (the local app)
    health_check: HealthCheck | None = None  # None: no active checks
    health_host: str = ""  # the Host of health check requests: the service's first host name
    per_try_timeout: float | None = None  # None: only request_timeout bounds the tries
    stream_idle_timeout: float | None = None  # a response body with no bytes this long ends; None: never
    retry: RetryPolicy | None = None  # None: no retries (the keep-alive race resend still applies)
    thresholds: Thresholds = UNLIMITED
    addresses: frozenset[str] = frozenset()  # virtual IPs the service is dialed at (transparent capture)
    ports: frozenset[int] = frozenset()  # ports it is dialed on with those addresses (empty: any)
    tunnel_port: int = 0  # tcp: the app port asked of the peer sidecar (its first `ports`; 0: the peer's only one)


def settings_for_service(service: ServiceConfig, tls: UpstreamTls | None = None) -> ClusterSettings:
    t = service.timeouts
    return ClusterSettings(
        connect_timeout=t.connect,
        request_timeout=t.request or NO_TIMEOUT,
        idle_timeout=t.idle,
        load_balancer=service.load_balancer,
        dns_refresh=service.dns_refresh,
        targets=tuple((e.address, e.weight) for e in service.endpoints),
        tls=tls,
        protocol=service.protocol,
        websocket_idle_timeout=t.idle or NO_TIMEOUT,  # `idle: 0` cannot mean closing a tunnel at once
        hash_on=service.hash_on,
        outlier_detection=service.outlier_detection,
        health_check=service.health_check,
        health_host=service.hosts[0] if service.hosts else service.name,
        per_try_timeout=t.per_try,
        stream_idle_timeout=t.idle or None,
        retry=RetryPolicy.from_config(service.retries) if service.retries.attempts else None,
        thresholds=Thresholds.from_config(service.circuit_breaker),
        addresses=frozenset(service.addresses),
        ports=frozenset(service.ports),
        tunnel_port=service.ports[0] if service.ports else 0,
    )


def settings_for_app(inbound: InboundConfig) -> ClusterSettings:
    """The local app behind the inbound listener: one endpoint, and no request timeout, retries or
    breakers of its own (the calling sidecar's policies govern the exchange, as in Istio's inbound)."""
    return ClusterSettings(
        connect_timeout=APP_CONNECT_TIMEOUT,
        request_timeout=NO_TIMEOUT,
        idle_timeout=inbound.app_idle_timeout,
        load_balancer="round_robin",
        dns_refresh=5.0,
        targets=((inbound.app, 1),),
        protocol="http2" if inbound.app_protocol == "h2c" else "http1",
        websocket_idle_timeout=APP_WEBSOCKET_IDLE_TIMEOUT,
    )


def settings_for_destination(host: str, port: int, protocol: str, idle_timeout: float) -> ClusterSettings:
    """A destination reached as it is, in plaintext, with no policies: an unknown destination that
    `outbound_policy: allow_any` passes through, or, on the inbound side in transparent mode, the app
    port a redirected connection was for (`idle_timeout`: the app's `app_idle_timeout`)."""
    return ClusterSettings(
        connect_timeout=APP_CONNECT_TIMEOUT,
        request_timeout=NO_TIMEOUT,
        idle_timeout=idle_timeout,
        load_balancer="round_robin",
        dns_refresh=5.0,
        targets=((Address(host, port), 1),),
        protocol=protocol,
        websocket_idle_timeout=APP_WEBSOCKET_IDLE_TIMEOUT,
    )


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """One service as `/clusters` shows it: its endpoints, whether a new request would get 503
    `overflow` (`breaker_open`), its ejections and retries so far (`sidecar_upstream_ejections_total`,
    `sidecar_upstream_retries_total`), and its open connections (`sidecar_upstream_connections_active`)."""

    name: str
    endpoints: tuple[EndpointStatistics, ...]
    ejections: int
    breaker_open: bool
    retries: int = 0
    open_connections: int = 0


def _reached_differently(tls: UpstreamTls | None, protocol: str, settings: ClusterSettings) -> bool:
    """Whether `settings` reach an endpoint another way than `tls` and `protocol` did: TLS on or off,
    mutual or simple, the peer identity or server name verified, or the protocol. New contexts for
    the same policy (a rotated certificate, which reaches new handshakes) do not count."""
    new = settings.tls
    if (tls is None) != (new is None) or protocol != settings.protocol:
        return True
    if tls is None or new is None:
        return False
    return (tls.mutual, tls.identity, tls.server_name, tls.ca) != (new.mutual, new.identity, new.server_name, new.ca)


def _paused(endpoint: Endpoint) -> bool:
    """Whether `endpoint`'s last connect failed within `CONNECT_FAILURE_PAUSE` (see `call.py`)."""
    return endpoint.refused_until > 0.0 and endpoint.refused_until > trio.current_time()


class Cluster:
    """One upstream service: its settings, its current endpoints, their balancer and policies."""

    def __init__(self, name: str, settings: ClusterSettings) -> None:
        self.name = name
        self.settings = settings
        self.breaker = Breaker(settings.thresholds)  # counts survive reloads; thresholds follow config
        self.budget = RetryBudget()
        self.endpoints: list[Endpoint] = []
        self.balancer: Balancer | None = None  # None: no endpoint is available
        self.available_count = 0
        self.ejections = 0  # ejections so far, for sidecar_upstream_ejections_total
        self.retries = 0  # retries started so far, for sidecar_upstream_retries_total
        self.outlier: OutlierDetector | None = None
        self.health: HealthChecker | None = None
        self.needs_dns = False
        self.next_refresh = 0.0
        self.background: trio.Nursery | None = None
        self._policies: tuple[object, ...] | None = None
        self._policy_tasks: trio.CancelScope | None = None
        self._ring: tuple[tuple[object, ...], RingHash] | None = None  # (what it was built from, balancer)
        self.configure(settings)

    def configure(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.breaker.thresholds = settings.thresholds
        self.needs_dns = not all(is_ip_literal(addr.host) for addr, _ in settings.targets)
        self.next_refresh = 0.0
        self._apply_policies(settings)
        static = [
            (addr.host, addr.port, weight, addr.host) for addr, weight in settings.targets if is_ip_literal(addr.host)
        ]
        if not self.needs_dns:
            self.set_endpoints(static)
        else:
            # Keep resolved endpoints until the next resolution replaces them.
            for endpoint in self.endpoints:
                self._configure_pool(endpoint)
            self._rebalance()

    def pick(self, request: Request | None = None, avoid: Endpoint | None = None) -> Endpoint:
        """An available endpoint for `request` (ring_hash reads its key); `avoid` (the endpoint of a
        failed try), and an endpoint whose last connect failed within `CONNECT_FAILURE_PAUSE`, are
        passed over when another is available. Raises NoHealthyUpstream when none is."""
        balancer = self.balancer
        if balancer is None:
            raise NoHealthyUpstream(detail=self._none_available())
        endpoint = balancer.pick(request)
        if self.available_count > 1 and (endpoint is avoid or endpoint.refused_until > 0.0):
            return self._pick_instead(request, endpoint, avoid)
        return endpoint

    def _pick_instead(self, request: Request | None, first: Endpoint, avoid: Endpoint | None) -> Endpoint:
        """Another endpoint than `first` (which is `avoid`, or one whose connect failed lately): the
        balancer's second choice when it is neither, else the first available that is neither,
        else any but `avoid`."""
        if first is not avoid and not _paused(first):
            return first  # its pause is over
        candidate = self.balancer.pick_other(request, first)  # type: ignore[union-attr]
        if candidate is not avoid and not _paused(candidate):
            return candidate  # the usual case
        usable = [e for e in self.endpoints if e.available and e is not avoid]
        ready = [e for e in usable if not _paused(e)]
        return (ready or usable or [first])[0]

    def record(self, endpoint: Endpoint, status: int | None) -> None:
        """The outcome of one try to `endpoint`: the response status, or None when no response head
        came (connect failure, reset, timeout, protocol error)."""
        outlier = self.outlier
        if outlier is not None:
            outlier.record(endpoint, status)

    def availability_changed(self) -> None:
        """An endpoint turned (un)healthy, was ejected or returned: rebuild the balancer's view."""
        self._rebalance()

    def _none_available(self) -> str:
        if not self.endpoints:
            return f"service {self.name} has no endpoints"
        return f"service {self.name}: all {len(self.endpoints)} endpoints are unhealthy or ejected"

    def set_endpoints(self, resolved: Iterable[tuple[str, int, int, str]]) -> None:
        """Replace the endpoint list (host, port, weight, configured name), keeping the state of
        endpoints that remain."""
        current = {e.address: e for e in self.endpoints}
        fresh: list[Endpoint] = []
        for host, port, weight, hostname in resolved:
            candidate = Endpoint(host, port, weight, self.settings.idle_timeout, hostname)
            existing = current.pop(candidate.address, None)
            if existing is not None:
                existing.weight = weight
                self._configure_pool(existing)
                if existing not in fresh:
                    fresh.append(existing)
            elif all(e.address != candidate.address for e in fresh):
                self._configure_pool(candidate)
                fresh.append(candidate)
        for gone in current.values():
            gone.removed = True  # in-flight requests finish; the pool keeps nothing more
            gone.pool.close_idle()
        self.endpoints = fresh
        self._rebalance()

    def _configure_pool(self, endpoint: Endpoint) -> None:
        pool = endpoint.pool
        if pool.open_connections and _reached_differently(pool.tls, pool.protocol, self.settings):
            pool.retire_connections()
        pool.idle_timeout = self.settings.idle_timeout
        pool.stream_idle_timeout = self.settings.stream_idle_timeout
        pool.tls = self.settings.tls
        pool.protocol = self.settings.protocol
        pool.background = self.background
        endpoint.breaker = self.breaker

    @property
    def open_connections(self) -> int:
        return sum(e.pool.open_connections for e in self.endpoints)

    def set_background(self, nursery: trio.Nursery) -> None:
        """Where this service's HTTP/2 connections run their reader tasks and its policies their
        tasks (the registry's nursery)."""
        self.background = nursery
        for endpoint in self.endpoints:
            endpoint.pool.background = nursery
        self._restart_policy_tasks()

    def _rebalance(self) -> None:
        available = [e for e in self.endpoints if e.available]
        self.available_count = len(available)
        if not available:
            self.balancer = None
        elif self.settings.load_balancer == "ring_hash":
            self.balancer = self._ring_hash()
        else:
            self.balancer = make_balancer(self.settings.load_balancer, available)

    def _ring_hash(self) -> RingHash:
        """The ring over every endpoint (unavailable ones are walked past), rebuilt only when the
        endpoints, their weights or the key change."""
        hash_on = self.settings.hash_on
        if hash_on is None:  # the config check requires hash_on with ring_hash
            raise ValueError(f"service {self.name}: ring_hash without hash_on")
        built_from = (hash_on, *((e, e.weight) for e in self.endpoints))
        if self._ring is None or self._ring[0] != built_from:
            self._ring = (built_from, RingHash(HashRing(self.endpoints), key_reader(hash_on)))
        return self._ring[1]

    def _apply_policies(self, settings: ClusterSettings) -> None:
        """New outlier or health check settings: new policy objects and tasks; endpoint state stays.
        Without health checks every endpoint counts as healthy."""
        policies = (settings.outlier_detection, settings.health_check, settings.health_host, settings.protocol)
        if policies == self._policies:
            return
        self._policies = policies
        outlier, health = settings.outlier_detection, settings.health_check
        self.outlier = OutlierDetector(self, outlier) if outlier is not None else None
        opaque = settings.protocol == "tcp"
        self.health = HealthChecker(self, health, settings.health_host, opaque=opaque) if health is not None else None
        if health is None:
            for endpoint in self.endpoints:
                endpoint.healthy = True
                endpoint.checks_passed = endpoint.checks_failed = 0
        if outlier is None:
            for endpoint in self.endpoints:
                endpoint.ejected = False
        self._restart_policy_tasks()

    def _restart_policy_tasks(self) -> None:
        if self._policy_tasks is not None:
            self._policy_tasks.cancel()
            self._policy_tasks = None
        tasks: list[Callable[[], Awaitable[None]]] = [p.run for p in (self.outlier, self.health) if p is not None]
        if self.background is not None and tasks:
            self._policy_tasks = trio.CancelScope()
            self.background.start_soon(_run_policies, self._policy_tasks, tasks)

    def retire(self) -> None:
        if self._policy_tasks is not None:
            self._policy_tasks.cancel()
            self._policy_tasks = None
        for endpoint in self.endpoints:
            endpoint.removed = True
            endpoint.pool.close_idle()
        self.endpoints = []
        self.balancer = None
        self.available_count = 0

    def statistics(self) -> ClusterStatistics:
        endpoints = tuple(e.statistics() for e in self.endpoints)
        connections = self.open_connections
        breaker_open = self.breaker.is_open(connections, self.must_connect())
        return ClusterStatistics(self.name, endpoints, self.ejections, breaker_open, self.retries, connections)

    def must_connect(self) -> bool:
        """Whether a new request would have to open a connection (and so meet `max_connections`):
        some endpoint is available and none has a connection the request would take. With none
        available the answer is `no_healthy_upstream` before any connection. Changes nothing."""
        available = [e for e in self.endpoints if e.available]
        return bool(available) and not any(e.pool.takes_without_connecting() for e in available)

    async def resolve(self) -> None:
        """Resolve DNS names among the targets into endpoints; on failure keep the last good set."""
        resolved: list[tuple[str, int, int, str]] = []
        for address, weight in self.settings.targets:
            if is_ip_literal(address.host):
                resolved.append((address.host, address.port, weight, address.host))
                continue
            try:
                infos = await trio.socket.getaddrinfo(address.host, address.port, type=trio.socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("dns_failed", service=self.name, host=address.host, error=str(exc))
                return
            seen: set[str] = set()
            for info in infos:
                ip = str(info[4][0])
                if ip not in seen:
                    seen.add(ip)
                    resolved.append((ip, address.port, weight, address.host))
        self.set_endpoints(resolved)


async def _run_policies(scope: trio.CancelScope, tasks: list[Callable[[], Awaitable[None]]]) -> None:
    """A cluster's policy tasks (outlier returns and reviews, health checks), until the cluster cancels `scope`."""
    with scope:
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(task)


MAX_DESTINATIONS = 256  # clusters kept for destinations reached as they are (see `destination`)
PASSTHROUGH = "passthrough"  # the service name of destinations no Service matches (allow_any)


class UpstreamRegistry:
    def __init__(self) -> None:
        self.clusters: dict[str, Cluster] = {}
        self.app: Cluster | None = None
        self.background: trio.Nursery | None = None
        # Destinations reached as they are, by (host, port, protocol), least recently used first.
        self._destinations: dict[tuple[str, int, str], Cluster] = {}
        self._app_idle_timeout = 4.0

    def match_destination(self, host: str, port: int) -> Cluster | None:
        """The service a connection to `host`:`port` (an original destination) is for: the one with
        an endpoint at exactly that address, else one whose `addresses` hold the IP and whose
        `ports` (if any) hold the port. None when no Service matches. A pod IP alone does not
        match: a pod listens on many ports."""
        by_address = None
        for cluster in self.clusters.values():
            for endpoint in cluster.endpoints:
                if endpoint.port == port and endpoint.host == host:
                    return cluster
            settings = cluster.settings
            if by_address is None and host in settings.addresses and (not settings.ports or port in settings.ports):
                by_address = cluster
        return by_address

    def destination(self, host: str, port: int, protocol: str) -> Cluster:
        """A cluster for `host`:`port` reached as it is (plaintext, no policies), made on first use.
        At most MAX_DESTINATIONS are kept: past that, the least recently used one with nothing in
        flight is retired (its idle connections closed)."""
        key = (host, port, protocol)
        found = self._destinations.pop(key, None)
        if found is None:
            settings = settings_for_destination(host, port, protocol, self._app_idle_timeout)
            found = Cluster(PASSTHROUGH, settings)
            if self.background is not None:
                found.set_background(self.background)
            if len(self._destinations) >= MAX_DESTINATIONS:
                self._retire_destination()
        self._destinations[key] = found
        return found

    def _retire_destination(self) -> None:
        for key, cluster in self._destinations.items():
            if not any(e.active_requests for e in cluster.endpoints):
                self._destinations.pop(key).retire()
                return

    def apply_services(
        self, services: Iterable[ServiceConfig], tls_for: Callable[[ServiceConfig], UpstreamTls | None]
    ) -> None:
        seen = set()
        for service in services:
            seen.add(service.name)
            settings = settings_for_service(service, tls_for(service))
            cluster = self.clusters.get(service.name)
            if cluster is None:
                cluster = self.clusters[service.name] = Cluster(service.name, settings)
                if self.background is not None:
                    cluster.set_background(self.background)
            elif cluster.settings != settings:
                cluster.configure(settings)
        for name in list(self.clusters):
            if name not in seen:
                self.clusters.pop(name).retire()

    def apply_app(self, inbound: InboundConfig | None) -> None:
        if inbound is not None:
            self._app_idle_timeout = inbound.app_idle_timeout
        if inbound is None:
            if self.app is not None:
                self.app.retire()
            self.app = None
            return
        settings = settings_for_app(inbound)
        if self.app is None:
            self.app = Cluster("app", settings)
            if self.background is not None:
                self.app.set_background(self.background)
        elif self.app.settings != settings:
            self.app.configure(settings)

    def handshakes(self, service: str) -> int:
        """TLS handshakes made so far to the endpoints of `service` (pooling keeps this low)."""
        cluster = self.clusters.get(service)
        return sum(e.pool.handshakes for e in cluster.endpoints) if cluster else 0

    def statistics(self) -> list[ClusterStatistics]:
        """Every upstream service's endpoints and their state, for `/clusters` and metrics."""
        return [cluster.statistics() for cluster in self.clusters.values()]

    def all_clusters(self) -> list[Cluster]:
        clusters = list(self.clusters.values())
        if self.app is not None:
            clusters.append(self.app)
        clusters += self._destinations.values()
        return clusters

    async def resolve_due(self) -> None:
        now = trio.current_time()
        for cluster in self.all_clusters():
            if cluster.needs_dns and now >= cluster.next_refresh:
                cluster.next_refresh = now + cluster.settings.dns_refresh
                await cluster.resolve()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resolve DNS names once, report started, then keep re-resolving and sweeping pools.
        Its nursery also holds the reader tasks of pooled HTTP/2 connections."""
        async with trio.open_nursery() as background:
            self.background = background
            for cluster in self.all_clusters():
                cluster.set_background(background)
            with trio.move_on_after(2.0):
                await self.resolve_due()
            task_status.started()
            while True:
                await trio.sleep(SWEEP_INTERVAL)
                now = trio.current_time()
                for cluster in self.all_clusters():
                    for endpoint in cluster.endpoints:
                        endpoint.pool.sweep(now)
                await self.resolve_due()
