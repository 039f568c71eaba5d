"""nginx as the origin behind two sidecars, and curl as the client (absolute-form through the
outbound listener as an HTTP proxy): real software on both ends."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from .conftest import Mesh, free_port, mesh_service

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is installed by scripts/bootstrap.sh")


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("hello from nginx\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096 * 8)  # 8 MiB
    port = free_port()
    conf = tmp_path / "nginx.conf"
    # As root, nginx workers switch to an unprivileged user that cannot read pytest's 0700 tmp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""
{user}
daemon off; worker_processes 1; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
  fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; keepalive_requests 10000; }}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(tmp_path / "error.log")])
    yield port, root
    proc.terminate()
    proc.wait()


async def wait_port(port: int) -> None:
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.05)


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(["curl", "-sS", *args], capture_stdout=True, capture_stderr=True)


async def test_nginx_behind_two_sidecars_with_curl_as_proxy_client(mesh: Mesh, nginx: tuple[int, Path]) -> None:
    port, root = nginx
    await wait_port(port)
    b = await mesh.sidecar(service="static", inbound_app=port)
    a = await mesh.sidecar(services=[mesh_service("static", b)])
    proxy = f"http://127.0.0.1:{a.outbound}"
    small = await curl("-x", proxy, "http://static/index.html")
    assert small.stdout == b"hello from nginx\n", small.stdout
    big = await curl("-x", proxy, "http://static/big.bin")
    assert hashlib.sha256(big.stdout).digest() == hashlib.sha256((root / "big.bin").read_bytes()).digest()
    head = await curl("-I", "-x", proxy, "http://static/big.bin")
    assert b"Content-Length: 8388608" in head.stdout
    missing = await curl("-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, "http://static/nope")
    assert missing.stdout == b"404"
    # curl reuses one connection for several URLs: keep-alive through both sidecars
    many = await curl("-x", proxy, *["http://static/index.html"] * 5)
    assert many.stdout == b"hello from nginx\n" * 5
    assert b.runtime.listeners["inbound"].accepted == 1
