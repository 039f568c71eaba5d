"""The throughput client of the TCP benchmark: streams bytes to the sink (tcp_sink.py) for a while
over one or more connections, half-closes, and waits for the sink's count of what it read.

    python tcp_stream.py PORT SECONDS [CONNECTIONS]

Prints one JSON object: bytes sent, bytes the sink counted, seconds from the first byte to the last
count read (the whole transfer, the proxies' buffers drained), and the errors of connections that
failed. Standard library only, one thread per connection (sendall releases the GIL), run pinned to
the load-generator core.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

CHUNK = 256 * 1024


class Clock:
    """When the transfer began and until when to send: set as the last connection is open."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.began = self.deadline = time.monotonic()

    def start(self) -> None:
        self.began = time.monotonic()
        self.deadline = self.began + self.seconds


def stream(port: int, clock: Clock, barrier: threading.Barrier, out: dict[str, Any]) -> None:
    data = memoryview(bytes(CHUNK))
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            barrier.wait()
            while time.monotonic() < clock.deadline:
                sock.sendall(data)
                sent += CHUNK
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while True:
                got = sock.recv(64)
                if not got:
                    break
                answer += got
        out["counted"] = int(answer) if answer.strip().isdigit() else 0
        if out["counted"] != sent:
            out["error"] = f"sent {sent} bytes, the sink counted {answer.strip()[:40]!r}"
    except (OSError, threading.BrokenBarrierError) as exc:
        barrier.abort()
        out["error"] = f"{exc.__class__.__name__}: {exc}"
    out["sent"] = sent
    out["done"] = time.monotonic()


def main() -> None:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    connections = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    clock = Clock(seconds)
    barrier = threading.Barrier(connections, action=clock.start, timeout=30)
    results: list[dict[str, Any]] = [{} for _ in range(connections)]
    threads = [threading.Thread(target=stream, args=(port, clock, barrier, out)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = {
        "connections": connections,
        "sent": sum(out.get("sent", 0) for out in results),
        "counted": sum(out.get("counted", 0) for out in results),
        "seconds": max(out["done"] for out in results) - clock.began,
        "errors": [out["error"] for out in results if "error" in out],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
