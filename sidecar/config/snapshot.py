"""The immutable Snapshot: one whole, validated config directory, and its content hash.

A Snapshot is the single reference the running sidecar swaps on reload; a request keeps the snapshot
it started with. Building one (reading, parsing, validating) is ``loader.py``'s job; this module only
holds the result and renders it for ``/config``. Nothing here may mutate after construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import RouteConfig, ServiceConfig, SidecarConfig


def content_version(files: Iterable[tuple[str, bytes]]) -> str:
    """The sha256 hex digest over ``(file name, content)`` pairs, taken in sorted name order.

    Names are the bare file names (not joined with the directory), so the version does not depend on
    how the directory was spelled. Each part is length-prefixed, so no two file sets collide by
    shifting bytes from one name or content into the next.
    """
    digest = hashlib.sha256()
    for name, content in sorted(files):
        encoded = name.encode("utf-8", "surrogateescape")
        for part in (encoded, content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """Every document of one config directory, validated as a whole."""

    directory: Path
    version: str
    """``content_version`` of the files read: changes exactly when a file's name or bytes change."""
    files: tuple[str, ...]
    """The files read, as ``os.path.join(DIR, name)`` with DIR as given, sorted by name."""
    sidecar: SidecarConfig
    services: Mapping[str, ServiceConfig]
    """By service name, in the order they were defined (files sorted by name, documents in order)."""
    routes: Mapping[str, RouteConfig]
    """By host (lower-case, without port), in the order they were defined."""
    identity: str | None = None
    """This workload's SPIFFE ID, read from the URI SAN of ``sidecar.tls.cert`` at load; ``None`` without tls."""

    def resolve(self, path: str) -> Path:
        """A path from the config (``sidecar.tls.cert``, a service's ``tls.ca``) as a file to open:
        ``directory / path``, which is ``path`` itself when it is absolute."""
        return self.directory / path

    def to_json(self) -> dict[str, Any]:
        """The effective config, defaults filled in, ready for ``json.dumps``.

        Values use the notation of the config files (durations ``"1.5s"``, sizes ``"64KiB"``,
        addresses ``"host:port"``), so each entry could be pasted back into a document of its kind.
        """
        return {
            "sidecar": self.sidecar.to_json(),
            "services": [service.to_json() for service in self.services.values()],
            "routes": [route.to_json() for route in self.routes.values()],
        }
