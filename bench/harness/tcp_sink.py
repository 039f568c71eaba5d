"""The throughput origin of the TCP benchmark: reads every connection to its end, discarding the
bytes, then answers one line with how many it read, and closes.

Run as `python tcp_sink.py PORT`, pinned to the load-generator core; the standard library only, one
thread per connection. The count lets the client (tcp_stream.py) check that every byte it sent
arrived, and its arrival marks the end of the transfer: the proxies' buffers are drained by then.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import sys

READ_SIZE = 256 * 1024


class Discard(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        buffer = bytearray(READ_SIZE)
        count = 0
        try:
            while True:
                got = sock.recv_into(buffer)
                if not got:
                    break
                count += got
            sock.sendall(b"%d\n" % count)
        except OSError:
            pass  # the client or a proxy reset it: the client sees that on its side


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


def main() -> None:
    server = Server(("127.0.0.1", int(sys.argv[1])), Discard)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
