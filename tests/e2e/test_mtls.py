"""Mutual TLS between sidecars: who may connect, who may call, what the app learns,
and what the outbound side verifies. Certificates are made in the tests (sidecar's dev PKI for SPIFFE
certs, trustme for foreign CAs and ordinary HTTPS)."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
import trio.testing
import trustme

from sidecar.certs import init_ca, issue_workload

from .apps import echo_app, header_values
from .conftest import Mesh, free_port, mesh_service, service, spiffe_id


def client_context(cert_dir: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    context.load_cert_chain(cert_dir / "cert.pem", cert_dir / "key.pem")
    return context


async def handshake(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context)
    await stream.do_handshake()
    return stream


async def refused(port: int, context: ssl.SSLContext) -> None:
    """The handshake, or the first exchange after it (TLS 1.3 reports client-cert rejection late), fails."""
    with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
        stream = await handshake(port, context)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        data = await stream.receive_some(100)
        if not data:
            raise trio.BrokenResourceError("closed")


async def wait_count(counter: Any, key: tuple[str, str]) -> None:
    with trio.fail_after(5):
        while counter[key] == 0:
            await trio.sleep(0.01)


async def inbound_sidecar(mesh: Mesh, **inbound: Any) -> Any:
    app = await mesh.origin()
    return await mesh.sidecar(service="orders", inbound_app=app, inbound=inbound)


async def test_mesh_caller_is_served_and_the_app_learns_its_identity(mesh: Mesh) -> None:
    b = await inbound_sidecar(mesh)
    async with httpx.AsyncClient(base_url=b.inbound_url, verify=mesh.pki.client_context("frontend")) as client:
        r = await client.get(
            "/info", headers={"host": "orders", "x-forwarded-client-cert": "By=spiffe://evil/x;URI=spiffe://evil/admin"}
        )
    assert r.status_code == 200
    info = r.json()
    assert header_values(info, "x-forwarded-client-cert") == [f"By={spiffe_id('orders')};URI={spiffe_id('frontend')}"]
    assert header_values(info, "x-forwarded-proto") == ["https"]


async def test_plaintext_to_a_strict_inbound_is_refused_and_counted(mesh: Mesh) -> None:
    b = await inbound_sidecar(mesh)
    stream = await trio.open_tcp_stream("127.0.0.1", b.inbound)
    await stream.send_all(b"GET /info HTTP/1.1\r\nHost: orders\r\n\r\n")
    with trio.fail_after(5):
        try:
            data = await stream.receive_some(100)
        except trio.BrokenResourceError:  # reset: the sidecar hung up on unread plaintext
            data = b""
    assert b"HTTP/1.1 200" not in data
    await wait_count(b.runtime.tls_failures, ("inbound", "plaintext"))


async def test_certificates_that_must_not_get_in(mesh: Mesh, tmp_path: Path) -> None:
    b = await inbound_sidecar(mesh)
    ca = mesh.pki.ca
    failures = b.runtime.tls_failures
    # no client certificate at all
    bare = ssl.create_default_context(cafile=str(ca))
    bare.check_hostname = False
    await refused(b.inbound, bare)
    await wait_count(failures, ("inbound", "no_client_cert"))
    # a SPIFFE cert from another mesh's CA
    init_ca("mesh.local", tmp_path / "other-ca")
    issue_workload(tmp_path / "other-ca", spiffe_id("intruder"), tmp_path / "intruder")
    await refused(b.inbound, client_context(tmp_path / "intruder", ca))
    await wait_count(failures, ("inbound", "unknown_ca"))
    # an expired certificate from the right CA
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    issue_workload(mesh.pki.ca_dir, spiffe_id("stale"), tmp_path / "stale", not_before=long_ago)
    await refused(b.inbound, client_context(tmp_path / "stale", ca))
    await wait_count(failures, ("inbound", "expired"))
    # a certificate that is not valid yet
    tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    issue_workload(mesh.pki.ca_dir, spiffe_id("early"), tmp_path / "early", not_before=tomorrow)
    await refused(b.inbound, client_context(tmp_path / "early", ca))
    await wait_count(failures, ("inbound", "not_yet_valid"))
    # the sidecar keeps serving good callers
    async with httpx.AsyncClient(base_url=b.inbound_url, verify=mesh.pki.client_context("frontend")) as client:
        assert (await client.get("/info", headers={"host": "orders"})).status_code == 200


async def test_tls_1_1_client_is_refused_and_counted(mesh: Mesh) -> None:
    b = await inbound_sidecar(mesh)
    old = client_context(mesh.pki.workload("frontend"), mesh.pki.ca)
    old.minimum_version = ssl.TLSVersion.TLSv1_1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    await refused(b.inbound, old)
    await wait_count(b.runtime.tls_failures, ("inbound", "protocol"))


async def test_callers_outside_allow_get_403(mesh: Mesh) -> None:
    """The inbound caller's identity is checked against `allow`, where '*' globs a path segment (one, never
    several): a caller outside it gets 403 `unauthorized`."""
    b = await inbound_sidecar(
        mesh,
        allow=[
            "spiffe://mesh.local/ns/default/sa/front*",
            "spiffe://mesh.local/ns/*/sa/ops",
            "spiffe://mesh.local/ns/*",  # not ns/default/sa/payments: that is three segments
            "spiffe://mesh.local/*/payments",
        ],
    )
    for caller, status in [("frontend", 200), ("payments", 403), ("ops", 200)]:
        async with httpx.AsyncClient(base_url=b.inbound_url, verify=mesh.pki.client_context(caller)) as client:
            r = await client.get("/info", headers={"host": "orders"})
        assert r.status_code == status, caller
        if status == 403:
            assert r.headers["x-sidecar-reason"] == "unauthorized"


async def test_permissive_mode_serves_plaintext_and_mtls_on_one_port(mesh: Mesh) -> None:
    """Permissive mode takes mTLS and plaintext on one port; XFCC is added only with a verified identity,
    and any such header arriving from the caller is removed first, a plaintext caller's too."""
    b = await inbound_sidecar(mesh, mode="permissive")
    spoofed = {"x-forwarded-client-cert": "By=spiffe://evil/x;URI=spiffe://mesh.local/ns/default/sa/admin"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{b.inbound}") as plain:
        r = await plain.get("/info", headers={"host": "orders", **spoofed})
    assert r.status_code == 200
    assert header_values(r.json(), "x-forwarded-client-cert") == []
    assert header_values(r.json(), "x-forwarded-proto") == ["http"]
    async with httpx.AsyncClient(base_url=b.inbound_url, verify=mesh.pki.client_context("frontend")) as tls:
        r = await tls.get("/info", headers={"host": "orders"})
    assert r.status_code == 200
    assert header_values(r.json(), "x-forwarded-client-cert") == [
        f"By={spiffe_id('orders')};URI={spiffe_id('frontend')}"
    ]


async def test_permissive_mode_with_allow_refuses_plaintext_callers(mesh: Mesh) -> None:
    b = await inbound_sidecar(mesh, mode="permissive", allow=[spiffe_id("frontend")])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{b.inbound}") as plain:
        r = await plain.get("/info", headers={"host": "orders"})
    assert r.status_code == 403 and r.headers["x-sidecar-reason"] == "unauthorized"


async def test_upstream_with_the_wrong_identity_is_refused(mesh: Mesh) -> None:
    b = await inbound_sidecar(mesh)
    a = await mesh.sidecar(
        service="frontend", services=[mesh_service("orders", b, tls={"identity": spiffe_id("payments")})]
    )
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info")
    assert r.status_code == 502
    assert r.headers["x-sidecar-reason"] == "upstream_connect_failure"
    assert "spiffe" not in r.text  # the reason is logged, not told to the app


async def test_pooled_mtls_needs_far_fewer_handshakes_than_requests(mesh: Mesh) -> None:
    b = await inbound_sidecar(mesh)
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b)])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        for _ in range(100):
            assert (await client.get("/info")).status_code == 200
    assert a.runtime.registry.handshakes("orders") == 1
    assert b.runtime.listeners["inbound"].accepted == 1


@pytest.mark.parametrize("protocol", ["http1", "auto"])
async def test_new_connections_resume_the_tls_session(mesh: Mesh, protocol: str) -> None:
    b = await inbound_sidecar(mesh)
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b, protocol=protocol)])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        assert (await client.get("/info")).status_code == 200
        pool = a.runtime.registry.clusters["orders"].endpoints[0].pool
        assert pool.tls_session is not None
        pool.close_idle()  # the next request needs a new connection
        await trio.testing.wait_all_tasks_blocked()
        assert (await client.get("/info")).status_code == 200
    conn = pool.idle[-1].wire.stream if protocol == "http1" else pool.h2_conns[-1].stream
    assert conn.session_reused
    assert pool.handshakes == 2


@pytest.fixture
def https_origin_ca() -> trustme.CA:
    return trustme.CA()


async def serve_https(nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path) -> int:
    cert = ca.issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "origin.pem"))
    port = free_port()
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile = config.keyfile = str(tmp_path / "origin.pem")
    config.accesslog = config.errorlog = None
    await nursery.start(
        lambda task_status: hypercorn.trio.serve(echo_app, config, mode="asgi", task_status=task_status)
    )
    return port


async def test_simple_mode_verifies_the_hostname(
    mesh: Mesh, nursery: trio.Nursery, tmp_path: Path, https_origin_ca: trustme.CA
) -> None:
    port = await serve_https(nursery, https_origin_ca, tmp_path)
    https_origin_ca.cert_pem.write_to_path(str(tmp_path / "origin-ca.pem"))
    ca = str(tmp_path / "origin-ca.pem")
    a = await mesh.sidecar(
        services=[
            {"name": "api", "endpoints": [{"address": f"localhost:{port}"}], "tls": {"mode": "simple", "ca": ca}},
            {
                "name": "wrong",
                "endpoints": [{"address": f"localhost:{port}"}],
                "tls": {"mode": "simple", "ca": ca, "server_name": "api.example.com"},
            },
            {"name": "untrusted", "endpoints": [{"address": f"localhost:{port}"}], "tls": {"mode": "simple"}},
        ]
    )
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:
        r = await client.get("/info", headers={"host": "api"})
        assert r.status_code == 200 and header_values(r.json(), "host") == ["api"]
        for host in ("wrong", "untrusted"):
            r = await client.get("/info", headers={"host": host})
            assert r.status_code == 502 and r.headers["x-sidecar-reason"] == "upstream_connect_failure", host


async def test_plaintext_service_to_a_plain_origin(mesh: Mesh) -> None:
    origin = await mesh.origin()
    a = await mesh.sidecar(services=[service("plain", origin)])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "plain"}) as client:
        assert (await client.get("/info")).status_code == 200


async def test_a_silent_client_is_cut_off_at_the_handshake_deadline(mesh: Mesh) -> None:
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app, limits={"header_read_timeout": "300ms"})
    stream = await trio.open_tcp_stream("127.0.0.1", b.inbound)
    with trio.fail_after(5):
        assert await stream.receive_some(10) == b""  # closed without a handshake
    await wait_count(b.runtime.tls_failures, ("inbound", "timeout"))


@pytest.mark.parametrize(("offered", "chosen"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")])
async def test_alpn_advertises_what_the_data_path_speaks(mesh: Mesh, offered: list[str], chosen: str) -> None:
    b = await inbound_sidecar(mesh)
    context = mesh.pki.client_context("frontend")
    context.set_alpn_protocols(offered)
    stream = await handshake(b.inbound, context)
    assert stream.selected_alpn_protocol() == chosen
    assert stream.version() in ("TLSv1.3", "TLSv1.2")
    await stream.aclose()
