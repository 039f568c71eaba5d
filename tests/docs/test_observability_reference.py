"""The observability and local-reply references name everything the code can emit.

- docs/reference/observability.md mentions, in backticks, every metric family a real Runtime
  exposes at `/metrics` (read from its `# TYPE` lines) and every key of an access-log line, HTTP
  and TCP (read from lines the telemetry records really write).
- docs/reference/replies.md has a section anchored `{#code}` for every reason code the code can
  produce: the `reason` of every `ProxyError` class, the reasons opaque TCP connections are reset
  with (`listeners/opaque.py`), and the codes the gRPC mapping knows.

The checker itself is tested with names that are not documented, so a passing run means something.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from sidecar.certs import init_ca, issue_workload
from sidecar.config.loader import load_directory
from sidecar.http import errors
from sidecar.http.grpc import STATUS_FOR_REASON
from sidecar.http.message import EMPTY_BODY, ConnectionInfo, Headers, Request
from sidecar.listeners import opaque
from sidecar.server import Runtime
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.prometheus import render
from sidecar.telemetry.record import OUTBOUND, RequestRecord, Telemetry, record_rejected
from sidecar.telemetry.tcp_record import TcpRecord

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "docs" / "reference" / "observability.md"
REPLIES = REPO / "docs" / "reference" / "replies.md"

_ANCHOR_RE = re.compile(r"\{#([A-Za-z0-9_-]+)\}")


def undocumented(names: Iterable[str], page_text: str) -> list[str]:
    """The names that do not appear in backticks on the page."""
    return sorted(name for name in set(names) if f"`{name}`" not in page_text)


def unanchored(codes: Iterable[str], page_text: str) -> list[str]:
    """The codes without a heading anchor `{#code}` of their own on the page."""
    anchors = set(_ANCHOR_RE.findall(page_text))
    return sorted(code for code in set(codes) if code not in anchors)


def section(page_text: str, anchor: str) -> str:
    """The text from the heading anchored `anchor` to the next heading of the same or a higher level."""
    lines = page_text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("#") and f"{{#{anchor}}}" in line:
            level = len(line) - len(line.lstrip("#"))
            body = []
            for following in lines[index + 1 :]:
                if following.startswith("#") and len(following) - len(following.lstrip("#")) <= level:
                    break
                body.append(following)
            return "\n".join(body)
    raise AssertionError(f"no heading anchored {{#{anchor}}}")


# -- what the code emits -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    root = tmp_path_factory.mktemp("obsdoc")
    init_ca("mesh.local", root / "ca")
    issue_workload(root / "ca", "spiffe://mesh.local/ns/default/sa/frontend", root / "wl")
    config = root / "config"
    config.mkdir()
    wl = root / "wl"
    (config / "sidecar.yaml").write_text(
        "kind: Sidecar\nservice: frontend\n"
        f"tls: {{cert: {wl}/cert.pem, key: {wl}/key.pem, ca: {wl}/ca.pem}}\n"
        "outbound: {listen: 127.0.0.1:15001}\nadmin: {listen: 127.0.0.1:15000}\n"
        "inbound: {listen: 127.0.0.1:15006, app: 127.0.0.1:8080}\n"
    )
    (config / "services.yaml").write_text(
        "kind: Service\nname: orders\nendpoints: [{address: 10.0.0.1:80}]\ntls: {mode: disabled}\n---\n"
        "kind: Service\nname: redis\nprotocol: tcp\nlisten: 127.0.0.1:16379\n"
        "endpoints: [{address: 10.0.0.2:6379}]\ntls: {mode: disabled}\n"
    )
    return Runtime(load_directory(config))


def exposed_metric_names(runtime: Runtime) -> set[str]:
    text = render(runtime.exposition().families()).decode()
    return set(re.findall(r"^# TYPE (\S+) \S+$", text, re.MULTILINE))


class CapturedLog:
    """Stands in for the access logger: keeps the keys of every line, in order."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, entry: dict[str, Any]) -> None:
        self.lines.append(entry)


def access_log_keys() -> dict[str, list[str]]:
    """The keys of one real HTTP line, one line of a request refused before parsing, and one TCP line."""
    log = CapturedLog()
    telemetry = Telemetry("frontend", RequestMetrics(), None, log)
    conn = ConnectionInfo("127.0.0.1", 40000)
    request = Request(b"GET", b"/orders/42", b"orders", Headers([]), EMPTY_BODY, conn, http_version="1.1")
    RequestRecord(telemetry, OUTBOUND, request).response_sent(200, 11)
    record_rejected(telemetry, OUTBOUND, conn, "HTTP/1.1", 400, "bad_request")
    TcpRecord(telemetry, OUTBOUND, conn, "redis", "127.0.0.1:16379").finish()
    assert len(log.lines) == 3
    http, rejected, tcp = (list(line) for line in log.lines)
    return {"http": http, "rejected": rejected, "tcp": tcp}


def reasons_the_code_produces() -> set[str]:
    """Every `ProxyError` reason, the opaque TCP reset reasons, and the gRPC mapping's codes."""
    reasons = set()
    pending: list[type[errors.ProxyError]] = [errors.ProxyError]
    while pending:
        cls = pending.pop()
        reasons.add(cls.reason)
        pending.extend(cls.__subclasses__())
    reasons |= opaque_tcp_reasons()
    reasons |= set(STATUS_FOR_REASON)
    return reasons


def opaque_tcp_reasons() -> set[str]:
    """opaque.py's own reason constants (module-level string assignments), and any string literal
    handed to `_refuse` (the other reasons come from `ProxyError`s, all collected above)."""
    tree = ast.parse(Path(opaque.__file__).read_text())
    reasons = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            reasons.add(node.value.value)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_refuse":
            reasons |= {arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)}
    return reasons


# -- the checks ---------------------------------------------------------------------------------


def test_every_exposed_metric_is_in_the_metrics_section(runtime: Runtime) -> None:
    names = exposed_metric_names(runtime)
    assert len(names) >= 11  # the collector really rendered its families
    assert undocumented(names, section(OBSERVABILITY.read_text(), "metrics")) == []


def test_every_access_log_field_is_in_the_access_log_section() -> None:
    keys = access_log_keys()
    assert keys["http"] == keys["rejected"] == keys["tcp"]  # one shape for every line, as documented
    assert "reason" in keys["http"] and "peer_identity" in keys["tcp"]
    page = section(OBSERVABILITY.read_text(), "access-log")
    assert undocumented(keys["http"] + keys["tcp"], page) == []


def test_every_reason_code_has_its_own_section_in_replies() -> None:
    reasons = reasons_the_code_produces()
    # The collection really reached each source: errors.py, opaque.py's literal, the gRPC table.
    assert {"overflow", "too_large", "internal", "bad_request", "rate_limited"} <= reasons
    assert unanchored(reasons, REPLIES.read_text()) == []


def test_every_opaque_tcp_reason_is_in_the_tcp_table() -> None:
    tcp = opaque_tcp_reasons() | {"overflow", "no_healthy_upstream"}  # and connect_opaque's ProxyErrors
    assert {"no_route", "unauthorized", "upstream_connect_failure", "upstream_reset", "bad_request"} <= tcp
    assert undocumented(tcp, section(REPLIES.read_text(), "opaque-tcp")) == []


# -- the checker is not vacuous -----------------------------------------------------------------


def test_the_checkers_find_what_is_missing() -> None:
    page = "## Metrics {#metrics}\n\n| `sidecar_requests_total` | counter |\n\n## Next {#next}\n`sidecar_other`\n"
    metrics = section(page, "metrics")
    assert undocumented(["sidecar_requests_total"], metrics) == []
    assert undocumented(["sidecar_requests_total", "sidecar_made_up_total"], metrics) == ["sidecar_made_up_total"]
    assert undocumented(["sidecar_other"], metrics) == ["sidecar_other"]  # another section does not count
    assert undocumented(["requests"], metrics) == ["requests"]  # a substring of a name is not the name
    replies = "## no_route {#no_route}\nno_healthy_upstream is mentioned but has no section\n"
    assert unanchored(["no_route", "no_healthy_upstream"], replies) == ["no_healthy_upstream"]
    with pytest.raises(AssertionError):
        section(page, "spans")


def test_the_real_pages_fail_the_check_for_a_made_up_name(runtime: Runtime) -> None:
    observability = OBSERVABILITY.read_text()
    names = exposed_metric_names(runtime) | {"sidecar_not_a_metric_total"}
    assert undocumented(names, section(observability, "metrics")) == ["sidecar_not_a_metric_total"]
    fields = access_log_keys()["http"] + ["not_a_field"]
    assert undocumented(fields, section(observability, "access-log")) == ["not_a_field"]
    assert unanchored(reasons_the_code_produces() | {"not_a_reason"}, REPLIES.read_text()) == ["not_a_reason"]
