"""The TLS material and identity policy of one config snapshot, built once and shared by every
connection: the inbound server context and mode, the allow list, this workload's SPIFFE ID, and
the client TLS settings for each upstream service.

Secure defaults (docs: behaviour/security.md): inbound is strict (mTLS only) and upstream services
are `mutual` unless the config says otherwise. Contexts are rebuilt when a new snapshot is applied,
so new handshakes use the certificates the snapshot names while established connections keep theirs.
"""

from __future__ import annotations

import ssl

from .config.schema import ServiceConfig
from .config.snapshot import Snapshot
from .tls import ALPN_TCP, AllowList, mutual_client_context, server_context, simple_client_context
from .transport.tls_accept import InboundTls
from .upstream.pool import UpstreamTls

# What a client connection offers in ALPN, by the service's `protocol`: opaque TCP to a mesh peer
# offers the tunnel's protocol, to a server outside the mesh (`simple`) nothing (the app's bytes go as
# they are).
ALPN: dict[str, tuple[str, ...]] = {
    "http1": ("http/1.1",),
    "http2": ("h2",),
    "auto": ("h2", "http/1.1"),
    "tcp": (ALPN_TCP,),
}
SIMPLE_ALPN = {**ALPN, "tcp": ()}


class MeshSecurity:
    def __init__(self, snapshot: Snapshot) -> None:
        sidecar = snapshot.sidecar
        self.identity: str | None = snapshot.identity
        tls = sidecar.tls
        self._snapshot = snapshot
        self._mutual: dict[str, ssl.SSLContext] = {}  # by protocol: each offers its own ALPN list
        self._simple: dict[str | None, dict[str, ssl.SSLContext]] = {}
        self.inbound: InboundTls | None = None
        if tls is not None:
            cert, key, ca = (snapshot.resolve(p) for p in (tls.cert, tls.key, tls.ca))
            self._mutual = {
                protocol: mutual_client_context(cert, key, ca, alpn=alpn) for protocol, alpn in ALPN.items()
            }
            inbound = sidecar.inbound
            if inbound is not None:
                context = server_context(cert, key, ca, require_client_cert=inbound.mode == "strict")
                self.inbound = InboundTls(context, permissive=inbound.mode == "permissive")
        inbound = sidecar.inbound
        self.allow = AllowList(inbound.allow) if inbound is not None and inbound.allow is not None else None

    def for_service(self, service: ServiceConfig) -> UpstreamTls | None:
        """How to speak TLS to `service`; None for plaintext (`tls.mode: disabled`)."""
        tls = service.tls
        if tls.mode == "disabled":
            return None
        if tls.mode == "mutual":
            if not self._mutual:  # the loader refuses this config; never reached
                raise ValueError(f"service {service.name} needs the workload certificate (Sidecar.tls)")
            return UpstreamTls(self._mutual, mutual=True, identity=tls.identity)
        contexts = self._simple.get(tls.ca)
        if contexts is None:
            ca = self._snapshot.resolve(tls.ca) if tls.ca is not None else None
            contexts = self._simple[tls.ca] = {
                p: simple_client_context(ca, alpn=alpn) for p, alpn in SIMPLE_ALPN.items()
            }
        return UpstreamTls(contexts, mutual=False, server_name=tls.server_name, ca=tls.ca)
