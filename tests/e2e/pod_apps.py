"""Apps for the "pods" of the network-namespace tests, run as their own processes inside a namespace:

    python pod_apps.py http PORT              hypercorn (HTTP/1.1 and h2c) serving `apps.echo_app`
    python pod_apps.py tls PORT CERT KEY      a TLS server of the app's own: answers each line with
                                              "tls-app <line>" (the caller checks whose certificate)
    python pod_apps.py echo PORT              a plain TCP echo server
    python pod_apps.py greet PORT             a server that speaks first ("hello from greet\\n")

Each prints "ready" once it listens (on every address of its namespace) and serves until killed.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _listen(port: int) -> socket.socket:
    server = socket.socket(socket.AF_INET6)  # IPv4 too (not v6-only)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::", port))
    server.listen(64)
    return server


def _serve(server: socket.socket, handle: object) -> None:
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()  # type: ignore[arg-type]


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _greet(conn: socket.socket) -> None:
    with conn:
        conn.sendall(b"hello from greet\n")
        while data := conn.recv(65536):
            conn.sendall(data)


def _tls(context: ssl.SSLContext):  # type: ignore[no-untyped-def]
    def handle(conn: socket.socket) -> None:
        try:
            with context.wrap_socket(conn, server_side=True) as tls, tls.makefile("rwb") as stream:
                for line in stream:
                    stream.write(b"tls-app " + line)
                    stream.flush()
        except (OSError, ssl.SSLError):
            pass

    return handle


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "http":
        import hypercorn.config
        import hypercorn.trio
        import trio
        from apps import echo_app

        config = hypercorn.config.Config()
        config.bind = [f"[::]:{port}"]  # IPv4 too (IPV6_V6ONLY is off by default)
        config.accesslog = None
        config.errorlog = None

        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(hypercorn.trio.serve, echo_app, config, mode="asgi"))
                print("ready", flush=True)

        trio.run(serve)
    elif kind == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        _serve(_listen(port), _tls(context))
    elif kind == "echo":
        _serve(_listen(port), _echo)
    elif kind == "greet":
        _serve(_listen(port), _greet)
    else:
        raise SystemExit(f"unknown app {kind!r}")


if __name__ == "__main__":
    main()
