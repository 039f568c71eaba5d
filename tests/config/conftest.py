"""Fixtures for the config tests: a scratch config directory that writes files and collects issues,
and a development mesh CA with a workload certificate for the `tls` sections."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from sidecar.certs import init_ca, issue_workload
from sidecar.config import ConfigError, Snapshot, load_directory

FRONTEND_ID = "spiffe://mesh.local/ns/default/sa/frontend"


def tls_section(workload: Path) -> str:
    """A Sidecar's `tls` line for the certificate files in ``workload`` (absolute paths)."""
    return f"tls: {{cert: {workload}/cert.pem, key: {workload}/key.pem, ca: {workload}/ca.pem}}"


class ConfigDir:
    """A config directory under test; ``write`` dedents, so line 1 is the first line written."""

    def __init__(self, path: Path, workload: Path) -> None:
        self.path = path
        self.workload = workload
        """A directory holding cert.pem, key.pem and ca.pem of a valid workload certificate."""

    def write(self, name: str, text: str) -> str:
        """Write ``name`` and return its path as the loader reports it (DIR joined with name)."""
        (self.path / name).write_text(textwrap.dedent(text).lstrip("\n"))
        return os.path.join(str(self.path), name)

    def with_sidecar(self) -> ConfigDir:
        """A minimal Sidecar with a valid `tls` section, so that Services may use mutual TLS."""
        self.write("sidecar.yaml", f"kind: Sidecar\nservice: frontend\n{tls_section(self.workload)}\n")
        return self

    def load(self) -> Snapshot:
        return load_directory(self.path)

    def issues(self) -> list[str]:
        """Every issue line the loader reports; fails the test if the directory loads."""
        with pytest.raises(ConfigError) as caught:
            load_directory(self.path)
        return [str(issue) for issue in caught.value.issues]


@pytest.fixture(scope="session")
def mesh_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development CA for trust domain mesh.local: a directory with ca.pem and ca-key.pem."""
    directory = tmp_path_factory.mktemp("pki") / "ca"
    init_ca("mesh.local", directory)
    return directory


@pytest.fixture(scope="session")
def workload(mesh_ca: Path) -> Path:
    """cert.pem, key.pem and ca.pem of ``FRONTEND_ID``, issued by ``mesh_ca``."""
    out = mesh_ca.parent / "frontend"
    issue_workload(mesh_ca, FRONTEND_ID, out)
    return out


@pytest.fixture
def config_dir(tmp_path: Path, workload: Path) -> ConfigDir:
    directory = tmp_path / "mesh"
    directory.mkdir()
    return ConfigDir(directory, workload)
