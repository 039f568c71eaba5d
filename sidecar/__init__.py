"""sidecar: a service-mesh sidecar proxy built on trio.

The packages are layers, each depending only on itself and the layers before it, lowest first:

- `logger.py`: process log lines on stdout (it imports nothing of sidecar, so every layer may log);
- `http/`: HTTP messages and the HTTP/1.1, HTTP/2 and gRPC codecs, sans-IO (no trio);
- `config/`, `tls.py`: data: the validated config, TLS contexts and identities;
- `transport/`: bytes meet trio streams: TCP and TLS streams, the protocol servers (they call the
  `Handler` they are given) and client connections (they report to the owner protocol they define);
- `upstream/`: endpoints, connection pools, balancers, breakers, retries, health and outlier policies;
- `telemetry/`: metrics, access log, spans, the Prometheus exposition;
- `pipeline/`: the layers around a handler (observe, local replies, authorization, forwarding, routes);
- `listeners/`, `security.py`: each listener's stack, and the TLS policy of a config snapshot;
- `server.py`, `cli.py`, `demo.py`: the running process and its commands.

`tests/test_layering.py` holds this order and checks it, imports made only for type checking
included, together with the absence of any import cycle.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
