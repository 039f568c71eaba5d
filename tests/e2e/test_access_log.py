"""The access log (one JSON line per request, exactly the documented fields) and the request metrics
(`sidecar_requests_total`, `sidecar_request_duration_seconds`) as real traffic flows through one and
two sidecars: outbound and inbound lines of one request, replies the sidecar makes itself, retries,
a client that leaves, the switch that turns the log off, and `--log-format console`, which makes
access lines human-readable too."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import sidecar.telemetry.logging

from .conftest import SIDECAR_BIN, Mesh, free_port, mesh_service, service, spiffe_id, wait_ready, write_config
from .test_resilience import FlakyOrigin

FIELDS = {
    "time",
    "direction",
    "method",
    "authority",
    "path",
    "protocol",
    "status",
    "reason",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "service",
    "upstream",
    "attempts",
    "peer_identity",
    "trace_id",
    "request_id",
}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def access_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    lines = []
    for line in capsys.readouterr().out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "direction" in record:
            lines.append(record)
    return lines


async def metrics(admin_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{admin_url}/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_one_line_per_request_on_each_sidecar_with_exactly_the_spec_fields(
    mesh: Mesh, hop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One access-log line per request on each sidecar, with exactly the documented fields (`protocol` as
    each sidecar was spoken to); in lines and metrics, `service` is the upstream service on outbound
    and this Sidecar's own service on inbound."""
    b = await mesh.sidecar(service="backend", inbound_app=await mesh.origin())  # called as Service orders
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b, protocol=hop)])
    body = b"x" * 1000
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:
        r = await client.post(
            "/echo?secret=1", content=body, headers={"host": "orders", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        )
    assert r.status_code == 200 and r.content == body
    lines = access_lines(capsys)
    outbound = next(line for line in lines if line["direction"] == "outbound")
    inbound = next(line for line in lines if line["direction"] == "inbound")
    assert len(lines) == 2
    for line in (outbound, inbound):
        assert set(line) == FIELDS
        assert line["method"] == "POST" and line["authority"] == "orders"
        assert line["path"] == "/echo"  # no query string: it may carry secrets
        assert line["status"] == 200 and line["reason"] is None
        assert line["bytes_in"] == 1000 and line["bytes_out"] == 1000
        assert line["attempts"] == 1
        assert line["duration_ms"] > 0 and line["time"].endswith("Z") and line["time"][10] == "T"
        assert line["trace_id"] == TRACE
    assert outbound["protocol"] == "HTTP/1.1" and outbound["service"] == "orders"
    assert inbound["protocol"] == ("HTTP/2" if hop == "auto" else "HTTP/1.1") and inbound["service"] == "backend"
    assert (
        outbound["request_id"] == inbound["request_id"] == r.request.headers.get("x-request-id", outbound["request_id"])
    )
    assert len(outbound["request_id"]) >= 16
    assert outbound["upstream"] == f"127.0.0.1:{b.inbound}" and outbound["peer_identity"] is None
    assert inbound["peer_identity"] == spiffe_id("frontend") and inbound["upstream"].startswith("127.0.0.1:")
    assert outbound["duration_ms"] >= inbound["duration_ms"]  # A's exchange contains B's

    a_metrics, b_metrics = await metrics(a.admin_url), await metrics(b.admin_url)
    assert a_metrics["sidecar_requests_total", (("code", "200"), ("direction", "outbound"), ("service", "orders"))] == 1
    assert b_metrics["sidecar_requests_total", (("code", "200"), ("direction", "inbound"), ("service", "backend"))] == 1
    count = ("sidecar_request_duration_seconds_count", (("direction", "outbound"), ("service", "orders")))
    assert a_metrics[count] == 1


async def test_replies_the_sidecar_makes_retries_and_http2_are_logged_and_counted(
    mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    flaky = FlakyOrigin(failures=1)
    sc = await mesh.sidecar(
        services=[
            service("orders", await mesh.origin(flaky)),
            service("down", 1, retries={"attempts": 0}),  # port 1: refused
        ]
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url, http1=False, http2=True) as client:
        retried = await client.get("/x", headers={"host": "orders"})
        refused = await client.get("/x", headers={"host": "down"})
        unrouted = await client.get("/x", headers={"host": "nowhere"})
    assert (retried.status_code, refused.status_code, unrouted.status_code) == (200, 502, 404)
    lines = {line["authority"]: line for line in access_lines(capsys)}
    assert lines["orders"]["attempts"] == 2 and lines["orders"]["status"] == 200
    assert lines["orders"]["protocol"] == "HTTP/2"
    assert lines["down"]["reason"] == "upstream_connect_failure" and lines["down"]["status"] == 502
    assert lines["down"]["upstream"] == "127.0.0.1:1"
    assert lines["nowhere"]["reason"] == "no_route" and lines["nowhere"]["service"] == "unknown"
    assert lines["nowhere"]["upstream"] is None and lines["nowhere"]["attempts"] == 0
    values = await metrics(sc.admin_url)
    assert values["sidecar_requests_total", (("code", "502"), ("direction", "outbound"), ("service", "down"))] == 1
    assert values["sidecar_requests_total", (("code", "404"), ("direction", "outbound"), ("service", "unknown"))] == 1
    assert values["sidecar_upstream_retries_total", (("service", "orders"),)] == 1


async def test_a_client_that_leaves_before_its_response_is_logged_as_499(
    mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())])
    # Over HTTP/2 the sidecar hears a client leave (the stream's reset, the connection's end) while
    # the upstream is still working; an HTTP/1.1 client that leaves is noticed at the next write.
    async with httpx.AsyncClient(base_url=sc.outbound_url, http1=False, http2=True) as client:
        with trio.move_on_after(0.2):
            await client.get("/slow/5000", headers={"host": "orders"})
    with trio.fail_after(5):
        while not (lines := access_lines(capsys)):
            await trio.sleep(0.05)
    assert lines[0]["status"] == 499 and lines[0]["path"] == "/slow/5000"


async def test_the_access_log_can_be_turned_off(
    mesh: Mesh, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_ACCESS_LOG", "off")
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())])
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:
        assert (await client.get("/info", headers={"host": "orders"})).status_code == 200
    assert access_lines(capsys) == []
    values = await metrics(sc.admin_url)  # the metrics still count it
    assert values["sidecar_requests_total", (("code", "200"), ("direction", "outbound"), ("service", "orders"))] == 1


async def test_a_request_refused_before_it_is_parsed_is_logged_and_counted(
    mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())])
    stream = await trio.open_tcp_stream("127.0.0.1", sc.outbound)
    async with stream:  # Content-Length and Transfer-Encoding together: a smuggling shape, 400
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nHost: orders\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        with trio.fail_after(5):
            answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400")
    (line,) = access_lines(capsys)
    assert set(line) == FIELDS
    assert (line["status"], line["reason"], line["protocol"]) == (400, "bad_request", "HTTP/1.1")
    assert line["direction"] == "outbound" and line["service"] == "unknown" and line["method"] is None
    values = await metrics(sc.admin_url)
    assert values["sidecar_requests_total", (("code", "400"), ("direction", "outbound"), ("service", "unknown"))] == 1


def json_lines(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue
        found.append(line)
    return found


async def test_console_format_makes_access_lines_human_readable(
    mesh: Mesh, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sidecar.telemetry.logging, "_format", "console")  # as `--log-format console` sets it
    flaky = FlakyOrigin(failures=1)
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(flaky))])
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:
        retried = await client.get("/x?secret=1", headers={"host": "orders", "x-request-id": "r-1"})
        unrouted = await client.get("/x", headers={"host": "nowhere"})
    assert (retried.status_code, unrouted.status_code) == (200, 404)
    stream = await trio.open_tcp_stream("127.0.0.1", sc.outbound)
    async with stream:  # refused before it is parsed: no method, path or trace
        await stream.send_all(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        with trio.fail_after(5):
            assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 400")
    out = capsys.readouterr().out
    assert json_lines(out) == []
    lines = [line for line in out.splitlines() if " [access   ] " in line]
    assert len(lines) == 3, out
    ok, no_route, refused = lines
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[access   \] outbound GET orders/x HTTP/1\.1 200 [\d.]+ ms"
        r" service=orders upstream=127\.0\.0\.1:\d+ attempts=2 bytes_in=0 bytes_out=\d+ request_id=r-1",
        ok,
    ), ok  # the time is the request's start, as in the JSON line; no query string; null fields left out
    assert ok[:24].endswith("Z") and ok[10] == "T"  # the request's start, as in the JSON line
    assert " outbound GET nowhere/x HTTP/1.1 404 " in no_route
    assert " reason=no_route service=unknown attempts=0 bytes_in=0 " in no_route and "upstream=" not in no_route
    assert " outbound - - HTTP/1.1 400 0.0 ms reason=bad_request service=unknown attempts=0 " in refused


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_run_log_format_applies_to_the_access_log(tmp_path: Path, fmt: str) -> None:
    outbound, admin = free_port(), free_port()
    sidecar_doc = {
        "kind": "Sidecar",
        "service": "client",
        "outbound": {"listen": f"127.0.0.1:{outbound}"},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "drain_timeout": "1s",
    }
    config = write_config(tmp_path / "mesh-config", [sidecar_doc])
    log = tmp_path / "sidecar.log"
    env = dict(os.environ, SIDECAR_LOG_LEVEL="info")
    env.pop("SIDECAR_ACCESS_LOG", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*SIDECAR_BIN, "run", "--log-format", fmt, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            trio.run(wait_ready, admin)
            assert httpx.get(f"http://127.0.0.1:{outbound}/x", headers={"host": "nowhere"}).status_code == 404
        finally:
            process.terminate()
            process.wait(timeout=10)
    text = log.read_text()
    access = [line for line in text.splitlines() if "nowhere" in line]
    assert len(access) == 1, text
    if fmt == "console":
        assert json_lines(text) == [], text  # neither the process lines nor the access line
        assert " [access   ] outbound GET nowhere/x HTTP/1.1 404 " in access[0]
        assert " reason=no_route service=unknown " in access[0]
    else:
        assert json_lines(text) == text.splitlines(), text
        entry = json.loads(access[0])
        assert set(entry) == FIELDS and (entry["status"], entry["reason"]) == (404, "no_route")
