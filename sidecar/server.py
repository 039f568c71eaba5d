"""The running sidecar: one top nursery holding the listeners, the upstream registry's task and
the signal watcher, plus the drain that ends it all.

Start order (docs: operations/lifecycle.md): the outbound listener is bound first, then admin, then
inbound; `/ready` turns 200 only once every listener is bound and serving. Drain (SIGTERM, SIGINT,
`POST /drain`): `/ready` turns 503, the inbound listener closes its sockets and its idle
connections, busy inbound connections finish their request and close, the outbound listener keeps
serving the app; the process ends when no inbound or outbound connection is left open, or at
`drain_timeout`. A second signal ends it at once.

The listeners here are bound, served and drained; what each does with a connection it accepted is
`listeners/connections.py`'s. The `listen` ports of tcp Services come and go with reloads.
"""

from __future__ import annotations

import errno
import os
import signal
import ssl
import time
from collections import Counter
from functools import partial

import trio

from .capture.iptables import global_ipv6
from .config.loader import ConfigError, directory_version, load_directory
from .config.schema import Address, CaptureConfig
from .config.snapshot import Snapshot
from .config.watch import watch
from .http.message import ConnectionInfo
from .listeners import connections
from .listeners.admin import admin_handler
from .listeners.inbound import inbound_handler
from .listeners.outbound import outbound_handler
from .logger import get_logger
from .pipeline.route import Router
from .security import MeshSecurity
from .telemetry.metrics import RequestMetrics
from .telemetry.prometheus import Exposition
from .telemetry.record import Telemetry, access_log_wanted, access_logger, record_rejected
from .telemetry.tracing import SHUTDOWN_WAIT, Tracing, TracingSettings, resolve_settings
from .transport.h1_server import ServerLimits
from .transport.listener import Listener
from .upstream.registry import UpstreamRegistry

log = get_logger("sidecar.server")

SHUTDOWN_WAIT_CUT = 0.25  # seconds spans may take to leave after a drain cut at drain_timeout


class ReloadRefused(Exception):
    """A config that is valid but cannot be applied to the running process."""


def _moved_listeners(old: Snapshot, new: Snapshot) -> str:
    """The listeners whose address (or presence) differs between two snapshots, as text; "" if none."""
    moved = []
    for name in ("outbound", "admin", "inbound"):
        before = getattr(old.sidecar, name)
        after = getattr(new.sidecar, name)
        where_before = before.listen if before is not None else None
        where_after = after.listen if after is not None else None
        if where_before != where_after:
            moved.append(f"{name}.listen {where_before} -> {where_after}")
    return ", ".join(moved)


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Runtime:
    """Process-wide state: the current config snapshot and what is derived from it."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = UpstreamRegistry()
        self.ready = False
        self.draining = False
        self.listeners: dict[str, Listener] = {}
        # The `listen` ports of tcp Services (explicit mode), by address; a reload binds new
        # ones and closes those gone (their connections carry on, and a drain waits for them).
        self.tcp_listeners: dict[Address, Listener] = {}
        self.listen_services: dict[Address, str] = {}  # which service each of those addresses serves
        self._closed_tcp_listeners: list[Listener] = []
        self._nursery: trio.Nursery | None = None
        # TLS handshake failures by (listener, reason); sidecar_tls_handshake_failures_total reads it.
        self.tls_failures: Counter[tuple[str, str]] = Counter()
        self.metrics = RequestMetrics()  # finished requests and config reloads, for /metrics
        # The last config reload that failed, as (RFC 3339 UTC time, message), for /config; a good
        # reload clears it.
        self.config_error: tuple[str, str] | None = None
        self.telemetry: Telemetry | None = None
        self._tracing_settings: TracingSettings | None = None
        self._retired_tracing: list[Tracing] = []  # replaced by a reload, still sending their spans
        self._drain_requested = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self.apply(snapshot)

    def apply(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot: one reference for routing, registry state kept across."""
        security = MeshSecurity(snapshot)
        self.registry.apply_services(snapshot.services.values(), security.for_service)
        self.registry.apply_app(snapshot.sidecar.inbound)
        limits = snapshot.sidecar.limits
        self.limits = ServerLimits(
            max_request_headers=limits.max_request_headers,
            max_request_body=limits.max_request_body,
            header_read_timeout=limits.header_read_timeout,
        )
        self.router = Router(snapshot.services, snapshot.routes)
        self.security = security
        self.allow = security.allow
        self.identity = security.identity
        self._apply_telemetry(snapshot)
        self.snapshot = snapshot

    def _apply_telemetry(self, snapshot: Snapshot) -> None:
        """Telemetry for the snapshot's service and tracing settings; a tracer is made anew only
        when those change (it owns a worker thread and the spans waiting for export)."""
        service = snapshot.sidecar.service
        settings = resolve_settings(snapshot.sidecar.tracing)
        current = self.telemetry
        if current is not None and current.service == service and self._tracing_settings == settings:
            return
        tracing = None
        if settings.exporter != "none":
            try:
                tracing = Tracing(service, settings)
            except (OSError, ValueError) as error:  # an unreadable OTEL_EXPORTER_OTLP_CERTIFICATE, a bad URL
                log.error("tracing_disabled", error=str(error), endpoint=settings.endpoint)
        access_log = access_logger() if access_log_wanted() else None
        self._tracing_settings = settings
        self.telemetry = Telemetry(service, self.metrics, tracing, access_log)
        if current is not None and current.tracing is not None:
            current.tracing.retire()  # its worker sends what is queued, then ends
            self._retired_tracing.append(current.tracing)
        # One running total across every tracer this process had, so the counter never goes back.
        tracers = [*self._retired_tracing, *([tracing] if tracing is not None else [])]
        self.metrics.dropped_spans_source = lambda: sum(t.dropped for t in tracers)

    def exposition(self) -> Exposition:
        """The Prometheus metric families of this runtime's numbers (`/metrics`); make one and keep it."""
        return Exposition(
            self.metrics,
            self.registry.statistics,
            self.tls_failures,
            lambda: self.snapshot.sidecar.inbound is not None,
        )

    def _rejected(self, direction: str, conn: ConnectionInfo, protocol: str, status: int, reason: str) -> None:
        record_rejected(self.current_telemetry(), direction, conn, protocol, status, reason)

    def watched_files(self) -> list[str]:
        """The certificate, key and CA files the current config names (their changes reload it)."""
        snapshot = self.snapshot
        paths = []
        tls = snapshot.sidecar.tls
        if tls is not None:
            paths += [tls.cert, tls.key, tls.ca]
        paths += [service.tls.ca for service in snapshot.services.values() if service.tls.ca]
        return [str(snapshot.resolve(path)) for path in paths]

    async def reload(self) -> None:
        """Read the config directory again and swap it in whole, or keep the running one and say why
        (log, `/config`'s `last_error`, `sidecar_config_reloads_total{result="failure"}`)."""
        directory = self.snapshot.directory
        try:
            snapshot = await trio.to_thread.run_sync(load_directory, directory)
            moved = _moved_listeners(self.snapshot, snapshot)
            before, after = self.snapshot.sidecar.capture.mode, snapshot.sidecar.capture.mode
            if before != after:
                raise ReloadRefused(
                    f"capture.mode cannot change while running ({before} -> {after}): the listeners were set up "
                    "for it at start; restart the sidecar (after `sidecar iptables` or `--clean`) to change it"
                )
            if moved:
                raise ReloadRefused(
                    f"listener addresses cannot change while running ({moved}); restart the sidecar to move them"
                )
            opened = await self._open_tcp_listeners(snapshot)
            self.apply(snapshot)
            self._swap_tcp_listeners(opened)
        except (ConfigError, ReloadRefused, OSError, ssl.SSLError) as error:
            self._reload_failed(str(directory), str(error))
            return
        except Exception as error:  # a bug must not end the sidecar: the running config stays
            log.exception("config_reload_crashed", directory=str(directory))
            self._reload_failed(str(directory), f"internal error: {error!r}")
            return
        self.metrics.config_reloads["success"] += 1
        self.config_error = None
        log.info("config_reloaded", version=snapshot.version, files=len(snapshot.files))

    @staticmethod
    def _check_capture(capture: CaptureConfig) -> None:
        """Transparent capture: the sidecar's own connections escape the nat rules only when it runs
        as `proxy_uid`; as anyone else its upstream connections would be redirected back to itself."""
        uid = os.getuid()
        if uid != capture.proxy_uid:
            log.warning(
                "capture_uid_mismatch",
                uid=uid,
                proxy_uid=capture.proxy_uid,
                message=f"running as uid {uid}, not capture.proxy_uid {capture.proxy_uid}: where `sidecar iptables` "
                "installed its rules, this sidecar's own connections are captured too (a loop); run it as proxy_uid",
            )

    async def _open_tcp_listeners(self, snapshot: Snapshot) -> dict[Address, Listener]:
        """The `listen` listeners `snapshot` wants, by address: those already open there (whichever
        service they served), the others bound now (not serving yet). A listener going away that
        holds the port a new address needs (127.0.0.1:P becoming 0.0.0.0:P) stops accepting first.
        A port that cannot be bound refuses the whole config (an OSError; at start, exit 1)."""
        wanted = {service.listen: service.name for service in snapshot.services.values() if service.listen}
        opened: dict[Address, Listener] = {}
        try:
            for address, name in wanted.items():
                current = self.tcp_listeners.get(address)
                if current is not None:
                    opened[address] = current
                    continue
                listener = Listener(f"tcp/{name}", address)
                try:
                    await listener.bind()
                except OSError as error:
                    in_the_way = [
                        old for at, old in self.tcp_listeners.items() if at.port == address.port and at not in wanted
                    ]
                    if error.errno != errno.EADDRINUSE or not in_the_way:
                        message = f"service {name}: cannot listen on {address}: {error.strerror}"
                        raise OSError(error.errno, message) from None
                    for old in in_the_way:
                        old.drain()  # its open connections carry on; the swap forgets it
                    try:
                        await listener.bind()
                    except OSError as again:
                        message = f"service {name}: cannot listen on {address}: {again.strerror}"
                        raise OSError(again.errno, message) from None
                opened[address] = listener
        except BaseException:
            for address, listener in opened.items():
                if self.tcp_listeners.get(address) is not listener:
                    listener.drain()
            raise
        return opened

    def _swap_tcp_listeners(self, wanted: dict[Address, Listener]) -> None:
        """Serve the newly bound `listen` listeners and close those no longer wanted (their open
        connections carry on to their end); each address serves the service that now names it."""
        self.listen_services = {s.listen: s.name for s in self.snapshot.services.values() if s.listen}
        self._closed_tcp_listeners = [old for old in self._closed_tcp_listeners if old.connections]
        for address, listener in self.tcp_listeners.items():
            if wanted.get(address) is not listener:
                listener.drain()
                self._closed_tcp_listeners.append(listener)
                log.info("tcp_listener_closed", address=str(address))
        for address, listener in wanted.items():
            if self.tcp_listeners.get(address) is not listener and self._nursery is not None:
                listener.tick = max(0.05, min(0.5, self.limits.header_read_timeout / 5))
                serve = connections.tcp_service(self, address)
                self._nursery.start_soon(listener.serve, serve, self._nursery)
                log.info("tcp_listener_opened", service=self.listen_services.get(address), address=str(address))
        self.tcp_listeners = wanted

    def _reload_failed(self, directory: str, message: str) -> None:
        self.metrics.config_reloads["failure"] += 1
        self.config_error = (_now_rfc3339(), message)
        log.error("config_reload_failed", directory=directory, error=message)

    async def _watch_config(self) -> None:
        await watch(
            str(self.snapshot.directory),
            self.watched_files,
            self.reload,
            changed_since_load=lambda: directory_version(self.snapshot.directory) != self.snapshot.version,
        )

    def current_telemetry(self) -> Telemetry:
        assert self.telemetry is not None
        return self.telemetry

    async def shutdown_tracing(self, wait: float = SHUTDOWN_WAIT) -> None:
        """Give queued spans `wait` seconds to leave; a collector that hangs costs no more."""
        tracers = [
            *self._retired_tracing,
            *([self.telemetry.tracing] if self.telemetry and self.telemetry.tracing else []),
        ]
        with trio.move_on_after(wait):
            for tracing in tracers:
                await trio.to_thread.run_sync(tracing.shutdown, abandon_on_cancel=True)

    def start_drain(self, cause: str) -> None:
        if not self.draining:
            log.info("drain_started", cause=cause)
        self.draining = True
        self._drain_requested.set()

    def stop_now(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    async def run(
        self, *, handle_signals: bool = True, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        sidecar = self.snapshot.sidecar
        quiet = False
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            self._nursery = nursery
            outbound = Listener("outbound", sidecar.outbound.listen)
            await outbound.bind()
            admin = Listener("admin", sidecar.admin.listen)
            await admin.bind()
            self.listeners = {"outbound": outbound, "admin": admin}
            inbound = None
            if sidecar.inbound is not None:
                inbound = Listener("inbound", sidecar.inbound.listen)
                await inbound.bind()
                self.listeners["inbound"] = inbound
            for name in ("outbound", "inbound"):
                if name in self.listeners:
                    self.listeners[name].rejected = partial(self._rejected, name)
            if sidecar.capture.mode == "transparent":
                self._check_capture(sidecar.capture)
                ipv6 = global_ipv6()  # then `sidecar iptables` installed ip6tables rules too
                for name in ("outbound", "inbound"):
                    if name in self.listeners and not self.listeners[name].bind_ipv6_twin() and ipv6:
                        log.error(
                            "ipv6_capture_unserved",
                            listener=name,
                            address=str(self.listeners[name].address),
                            message="this namespace has a global IPv6 address, so IPv6 connections are redirected "
                            "here, but the listener takes no IPv6: they will be refused. Listen on 0.0.0.0, "
                            "127.0.0.1 or [::], and keep IPv6 (::1) on the loopback interface",
                        )
            if handle_signals:
                nursery.start_soon(self._watch_signals)
            nursery.start_soon(self._watch_config)
            await nursery.start(self.registry.run)
            for listener in self.listeners.values():
                listener.tick = max(0.05, min(0.5, self.limits.header_read_timeout / 5))
            # Each stack gets what it reads; getters for what a reload replaces.
            outbound_stack = outbound_handler(
                router=lambda: self.router,
                registry=self.registry,
                telemetry=self.current_telemetry,
                outbound_policy=lambda: self.snapshot.sidecar.capture.outbound_policy,
            )
            nursery.start_soon(outbound.serve, connections.outbound(self, outbound, outbound_stack), nursery)
            admin_pages = admin_handler(self, self.exposition())
            nursery.start_soon(admin.serve, connections.plaintext(self, admin, admin_pages), nursery)
            if inbound is not None:
                inbound_stack = inbound_handler(
                    registry=self.registry,
                    telemetry=self.current_telemetry,
                    allow=lambda: self.allow,
                    identity=lambda: self.identity,
                )
                nursery.start_soon(inbound.serve, connections.inbound(self, inbound, inbound_stack), nursery)
            self._swap_tcp_listeners(await self._open_tcp_listeners(self.snapshot))
            self.ready = True
            log.info(
                "ready",
                service=sidecar.service,
                **{name: str(listener.address) for name, listener in self.listeners.items()},
            )
            task_status.started(self)
            await self._drain_requested.wait()
            if inbound is not None:
                inbound.drain()
            with trio.move_on_after(self.snapshot.sidecar.drain_timeout) as deadline:  # as reloaded
                if inbound is not None:
                    await inbound.wait_quiet()
                await outbound.wait_quiet()
                for listener in [*self.tcp_listeners.values(), *self._closed_tcp_listeners]:
                    await listener.wait_quiet()
            log.info("drained", timed_out=deadline.cancelled_caught)
            quiet = not deadline.cancelled_caught
            nursery.cancel_scope.cancel()
        # Spans of requests cut at drain_timeout are ended by now; a clean drain leaves the queue a
        # moment to go out, a cut one (or a second signal) hardly any.
        await self.shutdown_tracing(SHUTDOWN_WAIT if quiet else SHUTDOWN_WAIT_CUT)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self.draining:
                    log.info("stopping_now", signal=signal.Signals(signum).name)
                    self.stop_now()
                    return
                self.start_drain(signal.Signals(signum).name)
