"""nginx as the origin and as the reference reverse proxies (one HTTP proxy, a pair of HTTP proxies with
mutual TLS between them, or `stream` proxies for `run.py tcp`), run as our own processes.

Each nginx gets a config rendered from bench/templates/ into the run's temp dir, its pid file,
error log and temp folders there too (`-p` prefix, `-e` startup log), `daemon off` so the process we
start is the master, and `worker_processes 1`. Nothing touches the system nginx or its service.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.procs import Proc, ProcessSet, StartFailed, pinned, tail, wait_http_ok, wait_tcp_open
from harness.sidecars import TlsFiles

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SMALL_PATH = "/small.txt"
BODY_PATH = "/16k.bin"
SMALL_BODY = b"hello from the benchmark origin\n"
BODY_SIZE = 16 * 1024
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass
class NginxServer:
    """A running nginx: its master process, HTTP/1.1 port and h2c (prior knowledge) port."""

    proc: Proc
    http_port: int
    h2_port: int


def render(template: str, values: dict[str, object]) -> str:
    """Fill {{NAME}} placeholders of a template from bench/templates/."""
    text = (TEMPLATES / template).read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", str(value))
    if "{{" in text:
        raise ValueError(f"{template}: unfilled placeholder in {text[text.index('{{') :][:40]!r}")
    return text


def temp_paths(run_dir: Path, name: str) -> str:
    """nginx *_temp_path directives pointing into the run dir instead of /var/lib/nginx.

    nginx creates these folders itself, owned by its worker user.
    """
    lines = []
    for kind in TEMP_KINDS:
        lines.append(f"    {kind}_temp_path {run_dir / f'{name}-{kind}-temp'};")
    return "\n".join(lines)


def write_site(run_dir: Path) -> None:
    """The origin's document root: the small response and the 16 KiB file.

    nginx workers run as an unprivileged user, so the run dir (0700 from mkdtemp) is opened up.
    """
    run_dir.chmod(0o755)
    www = run_dir / "www"
    www.mkdir(mode=0o755, exist_ok=True)
    (www / SMALL_PATH.lstrip("/")).write_bytes(SMALL_BODY)
    (www / BODY_PATH.lstrip("/")).write_bytes(bytes(range(256)) * (BODY_SIZE // 256))


def start(procs: ProcessSet, nginx_bin: str, name: str, config: str, ports: tuple[int, int], core: int) -> NginxServer:
    """Write `config` to the run dir and start nginx with it pinned to `core`; wait until it serves."""
    run_dir = procs.log_dir
    conf_path = run_dir / f"{name}.conf"
    conf_path.write_text(config)
    argv = [nginx_bin, "-p", str(run_dir), "-c", str(conf_path), "-e", str(run_dir / f"{name}.startup.log")]
    proc = procs.start(name, pinned(core, argv))
    problem = wait_http_ok(ports[0], SMALL_PATH, proc, timeout=10.0)
    if problem:
        detail = proc.output_tail() + "\n" + tail(run_dir / f"{name}.error.log")
        procs.stop(proc)
        raise StartFailed(f"{name} did not start: {problem}", detail)
    return NginxServer(proc, *ports)


def origin_config(run_dir: Path, ports: tuple[int, int], address: str = "127.0.0.1") -> str:
    """The origin's nginx config: the small file and the 16 KiB file on `address`, HTTP/1.1 and h2c."""
    write_site(run_dir)
    return render(
        "origin.conf",
        {
            "NAME": "origin",
            "RUN_DIR": run_dir,
            "ADDRESS": address,
            "HTTP_PORT": ports[0],
            "H2_PORT": ports[1],
            "TEMP_PATHS": temp_paths(run_dir, "origin"),
        },
    )


def start_origin(procs: ProcessSet, nginx_bin: str, ports: tuple[int, int], core: int) -> NginxServer:
    """The fast origin every setup ends at."""
    return start(procs, nginx_bin, "origin", origin_config(procs.log_dir, ports), ports, core)


def start_proxy(procs: ProcessSet, nginx_bin: str, ports: tuple[int, int], origin_port: int, core: int) -> NginxServer:
    """nginx as reverse proxy with upstream keep-alive: the baseline for the sidecar."""
    run_dir = procs.log_dir
    config = render(
        "proxy.conf",
        {
            "NAME": "nginx-proxy",
            "RUN_DIR": run_dir,
            "HTTP_PORT": ports[0],
            "H2_PORT": ports[1],
            "ORIGIN_PORT": origin_port,
            "TEMP_PATHS": temp_paths(run_dir, "nginx-proxy"),
        },
    )
    return start(procs, nginx_bin, "nginx-proxy", config, ports, core)


def start_listening(
    procs: ProcessSet, nginx_bin: str, name: str, template: str, values: dict[str, object], port: int, core: int
) -> Proc:
    """An nginx whose listener speaks no plain HTTP (a `stream` proxy of bench/templates/stream-*.conf,
    a TLS-only server) pinned to `core`; ready once `port` accepts TCP."""
    run_dir = procs.log_dir
    config = render(template, {"NAME": name, "RUN_DIR": run_dir, **values})
    conf_path = run_dir / f"{name}.conf"
    conf_path.write_text(config)
    argv = [nginx_bin, "-p", str(run_dir), "-c", str(conf_path), "-e", str(run_dir / f"{name}.startup.log")]
    proc = procs.start(name, pinned(core, argv))
    problem = wait_tcp_open(port, proc, timeout=10.0)
    if problem:
        detail = proc.output_tail() + "\n" + tail(run_dir / f"{name}.startup.log") + tail(run_dir / f"{name}.error.log")
        procs.stop(proc)
        raise StartFailed(f"{name} did not start: {problem}", detail)
    return proc


def tls_values(tls: TlsFiles) -> dict[str, object]:
    """The certificate, key and CA placeholders of the mtls-*.conf templates."""
    return {"CERT": tls.cert, "KEY": tls.key, "CA": tls.ca}


def start_mtls_server(
    procs: ProcessSet, nginx_bin: str, name: str, port: int, origin_port: int, tls: TlsFiles, core: int
) -> Proc:
    """nginx B of the HTTP pair: HTTPS on `port` requiring a client certificate from the CA in `tls`,
    plain HTTP/1.1 with upstream keep-alive to the origin."""
    values = {**tls_values(tls), "HTTPS_PORT": port, "ORIGIN_PORT": origin_port}
    values["TEMP_PATHS"] = temp_paths(procs.log_dir, name)
    return start_listening(procs, nginx_bin, name, "mtls-server.conf", values, port, core)


def start_mtls_client(
    procs: ProcessSet,
    nginx_bin: str,
    name: str,
    ports: tuple[int, int],
    peer: tuple[int, str],
    tls: TlsFiles,
    core: int,
) -> NginxServer:
    """nginx A of the HTTP pair: plain HTTP/1.1 and h2c in, HTTPS with its client certificate to B
    (`peer`: port and the DNS name B's certificate must carry), kept alive; ready once a request
    went all the way through B to the origin."""
    run_dir = procs.log_dir
    values = {
        **tls_values(tls),
        "NAME": name,
        "RUN_DIR": run_dir,
        "HTTP_PORT": ports[0],
        "H2_PORT": ports[1],
        "PEER_PORT": peer[0],
        "PEER_NAME": peer[1],
        "TEMP_PATHS": temp_paths(run_dir, name),
    }
    return start(procs, nginx_bin, name, render("mtls-client.conf", values), ports, core)
