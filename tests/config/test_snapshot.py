"""The Snapshot: content version, immutability, and the JSON effective config."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from sidecar.config import Snapshot, content_version, load_directory

from .conftest import ConfigDir

EXAMPLE = Path(__file__).resolve().parents[2] / "mesh-config"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE, copy)
    return copy


def test_version_is_stable(example: Path) -> None:
    first = load_directory(example)
    assert load_directory(example).version == first.version
    assert len(first.version) == 64 and int(first.version, 16) >= 0
    names_and_contents = [(p.name, p.read_bytes()) for p in example.glob("*.yaml")]
    assert first.version == content_version(names_and_contents)


def test_version_changes_with_content(example: Path) -> None:
    before = load_directory(example).version
    services = example / "services.yaml"
    services.write_text(services.read_text().replace("dns_refresh: 5s", "dns_refresh: 6s"))
    changed = load_directory(example).version
    assert changed != before
    services.write_text(services.read_text() + "\n# only a comment\n")
    assert load_directory(example).version not in (before, changed)  # any byte counts


def test_version_changes_with_file_name_not_with_directory_spelling(example: Path, tmp_path: Path) -> None:
    before = load_directory(example).version
    moved = tmp_path / "elsewhere"
    shutil.copytree(example, moved)
    assert load_directory(moved).version == before
    (moved / "routes.yaml").rename(moved / "zz-routes.yaml")
    assert load_directory(moved).version != before


def test_version_ignores_skipped_files(example: Path) -> None:
    before = load_directory(example).version
    (example / ".notes.yaml").write_text("anything")
    (example / "README.md").write_text("anything")
    assert load_directory(example).version == before


def test_content_version_has_no_boundary_collisions() -> None:
    assert content_version([("a.yaml", b"bc")]) != content_version([("a.yamlb", b"c")])
    assert content_version([("a.yaml", b"x"), ("b.yaml", b"")]) != content_version([("a.yaml", b"x")])
    assert content_version([("b.yaml", b"2"), ("a.yaml", b"1")]) == content_version(
        [("a.yaml", b"1"), ("b.yaml", b"2")]
    )


def test_snapshot_is_immutable(example: Path) -> None:
    snapshot = load_directory(example)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.version = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        snapshot.services["new"] = snapshot.services["orders"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del snapshot.routes["shop"]  # type: ignore[attr-defined]


def test_to_json(example: Path) -> None:
    document = load_directory(example).to_json()
    assert json.loads(json.dumps(document)) == document
    assert set(document) == {"sidecar", "services", "routes"}
    assert document["sidecar"]["inbound"]["app"] == "127.0.0.1:8080"
    assert document["sidecar"]["inbound"]["mode"] == "strict"
    assert document["sidecar"]["inbound"]["allow"] == ["spiffe://mesh.local/ns/default/sa/*"]
    assert document["sidecar"]["tls"] == {  # paths as written
        "cert": "certs/frontend/cert.pem",
        "key": "certs/frontend/key.pem",
        "ca": "certs/frontend/ca.pem",
    }
    assert document["sidecar"]["limits"] == {
        "max_request_headers": "64KiB",
        "max_request_body": "0",
        "header_read_timeout": "10s",
    }
    orders = document["services"][0]
    assert orders["name"] == "orders"
    assert orders["endpoints"] == [
        {"address": "127.0.0.1:15106", "weight": 1},
        {"address": "127.0.0.1:15206", "weight": 1},
    ]
    assert orders["timeouts"] == {"connect": "1s", "request": "15s", "per_try": "5s", "idle": "60s"}
    assert orders["tls"] == {
        "mode": "mutual",
        "identity": "spiffe://mesh.local/ns/default/sa/orders",
        "ca": None,
        "server_name": None,
    }
    canary, split = document["routes"][0]["rules"]
    assert canary["match"] == {"path_prefix": "/api", "path": None, "headers": {"x-canary": "1"}}
    assert split["timeout"] == "3s"


def _write_back(snapshot: Snapshot, directory: Path) -> None:
    """Each entry of to_json, as a document of its kind, into one file."""
    effective = snapshot.to_json()
    documents = [{"kind": "Sidecar", **effective["sidecar"]}]
    documents += [{"kind": "Service", **service} for service in effective["services"]]
    documents += [{"kind": "Route", **route} for route in effective["routes"]]
    directory.mkdir()
    (directory / "effective.yaml").write_text(yaml.safe_dump_all(documents))
    if (snapshot.directory / "certs").is_dir():  # the tls paths are relative to the config directory
        shutil.copytree(snapshot.directory / "certs", directory / "certs")


def test_to_json_reads_back_as_the_same_config(example: Path, tmp_path: Path) -> None:
    snapshot = load_directory(example)
    _write_back(snapshot, tmp_path / "again")
    again = load_directory(tmp_path / "again")
    assert again.sidecar == snapshot.sidecar
    assert again.services == snapshot.services
    assert again.routes == snapshot.routes


def test_to_json_without_inbound_reads_back(config_dir: ConfigDir, tmp_path: Path) -> None:
    config_dir.write(
        "all.yaml",
        """
        kind: Sidecar
        service: client
        limits: {max_request_body: 1000, header_read_timeout: 1.25s}
        drain_timeout: 250ms
        """,
    )
    snapshot = config_dir.load()
    assert snapshot.to_json()["sidecar"]["inbound"] is None
    _write_back(snapshot, tmp_path / "again")
    assert load_directory(tmp_path / "again").sidecar == snapshot.sidecar


def test_identity_and_resolve(example: Path, tmp_path: Path) -> None:
    snapshot = load_directory(example)
    assert snapshot.identity == "spiffe://mesh.local/ns/default/sa/frontend"
    assert snapshot.sidecar.tls is not None
    cert = snapshot.resolve(snapshot.sidecar.tls.cert)
    assert cert == example / "certs/frontend/cert.pem" and cert.is_file()
    assert snapshot.resolve("/etc/mesh/ca.pem") == Path("/etc/mesh/ca.pem")  # absolute: as written
    relative = dataclasses.replace(snapshot, directory=Path("mesh"))
    assert relative.resolve("certs/a.pem") == Path("mesh/certs/a.pem")


def test_example_is_committed_without_the_ca_key() -> None:
    """The example certificates are for trying things only; the CA that issued them can issue no more."""
    assert not list(EXAMPLE.rglob("ca-key.pem"))
    assert "example" in (EXAMPLE / "certs" / "README.md").read_text().lower()


def test_pure_client_has_no_identity(config_dir: ConfigDir) -> None:
    config_dir.write("sidecar.yaml", "kind: Sidecar\nservice: client\n")
    snapshot = config_dir.load()
    assert (snapshot.identity, snapshot.sidecar.tls) == (None, None)
    assert snapshot.to_json()["sidecar"]["tls"] is None
