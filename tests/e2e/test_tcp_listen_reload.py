"""Reloads that keep a tcp Service's `listen` port while renaming the service, or widen its host on
the same port (127.0.0.1:P to 0.0.0.0:P): both apply, and the port carries to the service that names
it now (listeners are kept by address, and one in the way of a wider bind stops accepting first)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio
import yaml

from sidecar.config.loader import load_directory
from sidecar.server import Runtime

from .conftest import free_port


def write(directory: Path, service: str, listen: str, outbound: int, admin: int, origin: int) -> None:
    docs = [
        {
            "kind": "Sidecar",
            "service": "a",
            "outbound": {"listen": f"127.0.0.1:{outbound}"},
            "admin": {"listen": f"127.0.0.1:{admin}"},
        },
        {
            "kind": "Service",
            "name": service,
            "protocol": "tcp",
            "tls": {"mode": "disabled"},
            "endpoints": [{"address": f"127.0.0.1:{origin}"}],
            "listen": listen,
        },
    ]
    (directory / "mesh.yaml").write_text(yaml.safe_dump_all(docs))


async def echo_origin(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def carries(port: int) -> bool:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"ping")
            return await stream.receive_some() == b"ping"


async def reload_keeps_the_port(tmp_path: Path, first: tuple[str, str], second: tuple[str, str]) -> Runtime:
    outbound, admin = free_port(), free_port()
    async with trio.open_nursery() as nursery:
        origin = await echo_origin(nursery)
        write(tmp_path, *first, outbound, admin, origin)
        runtime = Runtime(load_directory(tmp_path))
        await nursery.start(partial(runtime.run, handle_signals=False))
        port = int(first[1].rsplit(":", 1)[1])
        assert await carries(port)
        write(tmp_path, *second, outbound, admin, origin)
        await runtime.reload()
        assert runtime.config_error is None, runtime.config_error
        assert await carries(port)
        runtime.stop_now()
        nursery.cancel_scope.cancel()
    return runtime


async def test_renaming_a_tcp_service_keeps_its_listen_port(tmp_path: Path) -> None:
    port = free_port()
    runtime = await reload_keeps_the_port(tmp_path, ("cache", f"127.0.0.1:{port}"), ("redis", f"127.0.0.1:{port}"))
    assert list(runtime.listen_services.values()) == ["redis"]
    assert runtime.metrics.tcp_connections == {("outbound", "cache"): 1, ("outbound", "redis"): 1}


async def test_widening_the_listen_host_on_the_same_port_applies(tmp_path: Path) -> None:
    port = free_port()
    runtime = await reload_keeps_the_port(tmp_path, ("cache", f"127.0.0.1:{port}"), ("cache", f"0.0.0.0:{port}"))
    assert [str(address) for address in runtime.tcp_listeners] == [f"0.0.0.0:{port}"]


async def test_a_reloaded_drain_timeout_bounds_the_drain(tmp_path: Path) -> None:
    """drain_timeout is read when the drain starts: lowered by a reload, it is the one that cuts a
    connection held open through the drain."""
    outbound, admin, port = free_port(), free_port(), free_port()
    async with trio.open_nursery() as nursery:
        origin = await echo_origin(nursery)
        write(tmp_path, "cache", f"127.0.0.1:{port}", outbound, admin, origin)
        config = tmp_path / "mesh.yaml"
        config.write_text(config.read_text().replace("service: a\n", "service: a\ndrain_timeout: 30s\n", 1))
        runtime = Runtime(load_directory(tmp_path))
        finished = trio.Event()

        async def run() -> None:
            await runtime.run(handle_signals=False)
            finished.set()

        nursery.start_soon(run)
        with trio.fail_after(5):
            while not runtime.ready:
                await trio.sleep(0.01)
        config.write_text(config.read_text().replace("drain_timeout: 30s", "drain_timeout: 300ms"))
        await runtime.reload()
        assert runtime.config_error is None
        held = await trio.open_tcp_stream("127.0.0.1", port)  # open through the drain
        async with held:
            await held.send_all(b"ping")
            assert await held.receive_some() == b"ping"
            started = trio.current_time()
            runtime.start_drain("test")
            with trio.fail_after(5):
                await finished.wait()
            assert trio.current_time() - started < 2.0
        nursery.cancel_scope.cancel()
