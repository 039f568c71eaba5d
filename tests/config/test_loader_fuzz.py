"""Bad input never escapes the loader as anything but a ConfigError with FILE:LINE issues."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigError, Snapshot, load_directory

EXAMPLE = Path(__file__).resolve().parents[2] / "mesh-config"
EXAMPLE_DOCUMENTS = [
    document for path in sorted(EXAMPLE.glob("*.yaml")) for document in yaml.safe_load_all(path.read_text())
]
FIELD_NAMES = [
    "kind",
    "service",
    "name",
    "host",
    "hosts",
    "endpoints",
    "address",
    "weight",
    "rules",
    "to",
    "match",
    "inbound",
    "listen",
    "limits",
    "timeouts",
    "headers",
    "path",
    "path_prefix",
    "timeout",
    "retries",
    "tls",
    "cert",
    "key",
    "ca",
    "mode",
    "allow",
    "identity",
    "server_name",
    "load_balancer",
    "hash_on",
    "header",
    "cookie",
    "source_ip",
    "outlier_detection",
    "consecutive_5xx",
    "max_ejection_percent",
    "health_check",
    "interval",
    "unhealthy_threshold",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "1s",
            "250ms",
            "-1s",
            "64KiB",
            "1.5MiB",
            "127.0.0.1:80",
            "[::1]:1",
            "::1",
            "orders",
            "/api",
            "Sidecar",
            "Service",
            "Route",
            "shop",
            "orders-v2",
            "x:0",
            "[zz]:1",
            "1e9h",
            ".s",
            "spiffe://mesh.local/ns/default/sa/*",
            "spiffe://mesh.local",
            "simple",
            "disabled",
            "certs/frontend/cert.pem",
            "certs/frontend/key.pem",
            "ring_hash",
            "x-user",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6)), children, max_size=4),
    ),
    max_leaves=12,
)


def _load(files: dict[str, str]) -> Snapshot | ConfigError:
    with tempfile.TemporaryDirectory() as directory:
        shutil.copytree(EXAMPLE / "certs", Path(directory, "certs"))  # the example's tls paths resolve
        for name, text in files.items():
            Path(directory, name).write_text(text)
        try:
            return load_directory(directory)
        except ConfigError as error:
            for issue in error.issues:
                assert issue.file == directory or issue.file.startswith(directory + os.sep)
                assert issue.line is None or issue.line >= 1
                assert "cannot validate document" not in issue.message, issue  # no validator crashed
                assert "\n" not in str(issue)
            return error


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


EXAMPLE_PATHS = [(d, p) for d, document in enumerate(EXAMPLE_DOCUMENTS) for p in _paths(document) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLE_PATHS), values)
def test_mutated_example_never_crashes(where: tuple[int, tuple[Any, ...]], value: Any) -> None:
    documents = copy.deepcopy(EXAMPLE_DOCUMENTS)
    index, path = where
    parent = documents[index]
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    _load({"mesh.yaml": yaml.safe_dump_all(documents)})


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=3))
def test_random_documents_never_crash(documents: list[Any]) -> None:
    _load({"sidecar.yaml": "kind: Sidecar\nservice: a\n", "random.yaml": yaml.safe_dump_all(documents)})


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("kind: Sidecar\n-[]{},&*!|>'\"#%@`?:~0x.\t ")), max_size=80))
def test_random_text_never_crashes(text: str) -> None:
    _load({"a.yaml": text})
