"""`sidecar iptables` for real, each test in fresh network namespaces (tests/netns.py): the chains and
hooks it installs, a second run, --dry-run, --clean, IPv6, the errors, and TCP actually redirected.

Needs root and iproute2 (skipped otherwise, with the reason) and the iptables tools.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent, indent

import pytest

from ..netns import Lab, Namespace, listening

REPO = Path(__file__).resolve().parents[2]
CERTS = REPO / "mesh-config" / "certs" / "frontend"
PROXY_UID = 1337
APP_UID = 65534  # nobody

pytestmark = pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="iptables is installed by bootstrap")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.fixture
def config_dir() -> Iterator[Path]:
    """A config directory anyone may read (the tests also run the command as nobody)."""
    directory = Path(tempfile.mkdtemp(prefix="sidecar-iptables-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def write_config(directory: Path, *, inbound: bool = True, capture: str = "") -> Path:
    text = "kind: Sidecar\nservice: web\n"
    if inbound:
        text += f"tls: {{cert: {CERTS}/cert.pem, key: {CERTS}/key.pem, ca: {CERTS}/ca.pem}}\ninbound: {{}}\n"
    text += "capture:\n  mode: transparent\n" + indent(dedent(capture), "  ")
    path = directory / "sidecar.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return directory


def sidecar(
    ns: Namespace, *args: str, user: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return ns.run(sys.executable, "-m", "sidecar", "iptables", *args, user=user, env=env, check=False)


def saved(ns: Namespace, tool: str, *args: str) -> list[str]:
    """What an ``*tables-save`` prints, without the comment lines and with the counters zeroed."""
    out = ns.run(tool, *args).stdout
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in out.splitlines() if not line.startswith("#")]


def nat(ns: Namespace, family: int = 4) -> list[str]:
    """`iptables-save -t nat` (or `ip6tables-save`), as ``saved`` gives it."""
    return saved(ns, "iptables-save" if family == 4 else "ip6tables-save", "-t", "nat")


def sidecar_lines(lines: list[str]) -> dict[str, list[str]]:
    """The sidecar's part of a table or of restore text: its chain declarations, and the rules that
    are in its chains or jump into them, each chain's in order."""
    found: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith(":SIDECAR_"):
            found.setdefault("declared", []).append(line)
        elif line.startswith("-A ") and "SIDECAR_" in line:
            found.setdefault(line.split()[1], []).append(line)
    found["declared"] = sorted(found.get("declared", []))
    return found


def sections(dry_run_stdout: str) -> dict[str, list[str]]:
    """--dry-run's output by restore command (the comment line heading each section)."""
    result: dict[str, list[str]] = {}
    current = None
    for line in dry_run_stdout.splitlines():
        if line.startswith("# "):
            current = line[2:].split()[0]
            result[current] = []
        else:
            assert current is not None, dry_run_stdout
            result[current].append(line)
    return result


def test_install_twice_then_clean_leaves_the_table_as_it_was(lab: Lab, config_dir: Path) -> None:
    ns = lab.namespace()
    config = str(write_config(config_dir, capture="exclude_inbound_ports: [22]\nexclude_outbound_ports: [5432]\n"))
    before = nat(ns)

    dry = sidecar(ns, "-c", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert nat(ns) == before  # a dry run changes nothing
    (restore,) = sections(dry.stdout).values()  # IPv4 only: the namespace has no global IPv6
    assert "-A PREROUTING -p tcp -j SIDECAR_INBOUND" in restore and "-A OUTPUT -p tcp -j SIDECAR_OUTPUT" in restore

    first = sidecar(ns, "-c", config)
    assert first.returncode == 0, first.stderr
    installed = nat(ns)
    assert sidecar_lines(installed) == sidecar_lines(restore)  # the dry run showed exactly this
    assert installed.count("-A PREROUTING -p tcp -j SIDECAR_INBOUND") == 1
    assert "-A SIDECAR_INBOUND -p tcp -m tcp --dport 22 -j RETURN" in installed
    assert "-A SIDECAR_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN" in installed

    again = sidecar(ns, "-c", config)
    assert again.returncode == 0, again.stderr
    assert nat(ns) == installed  # one copy of everything

    dry = sidecar(ns, "-c", config, "--dry-run")
    (restore,) = sections(dry.stdout).values()
    assert not [line for line in restore if line.startswith(("-A PREROUTING", "-A OUTPUT"))]  # hooks are there
    hooks = ["-A PREROUTING -p tcp -j SIDECAR_INBOUND", "-A OUTPUT -p tcp -j SIDECAR_OUTPUT"]
    assert sidecar_lines([*restore, *hooks]) == sidecar_lines(installed)

    clean = sidecar(ns, "--clean")
    assert clean.returncode == 0, clean.stderr
    assert nat(ns) == before
    clean = sidecar(ns, "--clean")
    assert clean.returncode == 0, clean.stderr
    assert "nothing to remove" in clean.stdout
    assert nat(ns) == before


def test_ipv6_rules_only_in_a_namespace_with_a_global_ipv6_address(lab: Lab, config_dir: Path) -> None:
    config = str(write_config(config_dir, inbound=False, capture='exclude_outbound_cidrs: ["2001:2:0:ff::/64"]\n'))
    v4_only, dual, peer = lab.namespace(), lab.namespace(), lab.namespace()
    lab.link(v4_only, peer)
    lab.link(dual, peer, ipv6=True)

    v6_before = nat(v4_only, 6)
    assert sidecar(v4_only, "-c", config).returncode == 0
    assert "-A OUTPUT -p tcp -j SIDECAR_OUTPUT" in nat(v4_only)
    assert nat(v4_only, 6) == v6_before

    v6_before = nat(dual, 6)
    dry = sidecar(dual, "-c", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    v4_text, v6_text = sections(dry.stdout).values()
    assert "-A SIDECAR_OUTPUT -d ::1/128 -j RETURN" in v6_text
    assert "-A SIDECAR_OUTPUT -d 2001:2:0:ff::/64 -j RETURN" in v6_text
    assert not [line for line in v4_text if "::" in line]
    installed = sidecar(dual, "-c", config)
    assert installed.returncode == 0, installed.stderr
    assert "IPv6" in installed.stdout
    assert sidecar_lines(nat(dual, 6)) == sidecar_lines(v6_text)
    assert sidecar_lines(nat(dual)) == sidecar_lines(v4_text)
    assert "SIDECAR_INBOUND" not in "\n".join(nat(dual))  # no inbound section, nothing captured inbound

    assert sidecar(dual, "--clean").returncode == 0
    assert nat(dual, 6) == v6_before
    assert sidecar_lines(nat(dual)) == {"declared": []}


# Each listener answers with its own port and the connection's original destination (SO_ORIGINAL_DST;
# "-" where the namespace tracks no connections, having no nat rules).
LISTENERS = r"""
import socket, struct, sys, threading

def serve(sock):
    while True:
        conn, _ = sock.accept()
        with conn:
            try:
                raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
                port, addr = struct.unpack("!2xH4s8x", raw)
                original = f"{socket.inet_ntoa(addr)}:{port}"
            except OSError:  # not tracked: no nat table in this namespace
                original = "-"
            conn.sendall(f"{sock.getsockname()[1]} {original}".encode())

host, ports = sys.argv[1], sys.argv[2:]
for port in ports:
    sock = socket.create_server((host, int(port)), reuse_port=False)
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT = r"""
import os, socket, sys
host, port, uid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
"".encode("idna")  # looked up now: nobody may not read the stdlib later
os.setgroups([]); os.setgid(uid); os.setuid(uid)
try:
    with socket.create_connection((host, port), timeout=5) as conn:
        print(conn.recv(100).decode())
except ConnectionRefusedError:
    print("refused")
"""


def test_the_apps_connections_are_redirected_and_the_proxys_are_not(lab: Lab, config_dir: Path) -> None:
    app, peer = lab.namespace(), lab.namespace()
    link = lab.link(app, peer)
    peer.add_address(link.b_dev, "198.18.0.3/24")  # an excluded destination
    config = write_config(
        config_dir,
        capture="""\
            exclude_outbound_ports: [8081]
            exclude_outbound_cidrs: [198.18.0.3/32]
            exclude_inbound_ports: [8022]
            """,
    )
    result = sidecar(app, "-c", str(config))
    assert result.returncode == 0, result.stderr
    # The app's pod: the outbound and inbound listeners (the admin port, 15000, has no listener, so a
    # connection there that were redirected would reach 15006 instead of being refused).
    listening(app.popen(sys.executable, "-c", LISTENERS, "0.0.0.0", "15001", "15006", "8022", stdin=subprocess.PIPE))
    # The peer: a server on every address.
    listening(peer.popen(sys.executable, "-c", LISTENERS, "0.0.0.0", "8080", "8081", stdin=subprocess.PIPE))

    def connect(ns: Namespace, host: str, port: int, uid: int) -> str:
        return ns.run(sys.executable, "-c", CLIENT, host, str(port), str(uid)).stdout.strip()

    # Outbound: the app's connection goes to the outbound listener, which can read where it was going.
    assert connect(app, link.b_addr, 8080, APP_UID) == f"15001 {link.b_addr}:8080"
    # The sidecar's own connection (proxy_uid) goes where it was sent.
    assert connect(app, link.b_addr, 8080, PROXY_UID) == "8080 -"
    assert connect(app, link.b_addr, 8081, APP_UID) == "8081 -"  # excluded port
    assert connect(app, "198.18.0.3", 8080, APP_UID) == "8080 -"  # excluded CIDR
    assert connect(app, "127.0.0.1", 7, APP_UID) == "refused"  # loopback is never captured
    assert connect(app, "127.0.0.1", 15006, APP_UID) == "15006 127.0.0.1:15006"
    # Inbound: a peer's connection to any port goes to the inbound listener, but the excluded ones
    # and the admin port.
    assert connect(peer, link.a_addr, 8080, APP_UID) == f"15006 {link.a_addr}:8080"
    assert connect(peer, link.a_addr, 15006, APP_UID) == f"15006 {link.a_addr}:15006"
    assert connect(peer, link.a_addr, 8022, APP_UID) == f"8022 {link.a_addr}:8022"
    assert connect(peer, link.a_addr, 15000, APP_UID) == "refused"


def test_without_cap_net_admin_it_says_so(lab: Lab, config_dir: Path) -> None:
    ns = lab.namespace()
    config = str(write_config(config_dir, inbound=False))
    before = nat(ns)
    no_net_admin = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")  # still root
    for argv, user in [
        ((*no_net_admin, sys.executable, "-m", "sidecar", "iptables", "-c", config), None),
        ((sys.executable, "-m", "sidecar", "iptables", "-c", config), APP_UID),
        ((sys.executable, "-m", "sidecar", "iptables", "--clean"), APP_UID),
    ]:
        result = ns.run(*argv, user=user, check=False)
        assert result.returncode == 1, result
        (line,) = result.stderr.splitlines()
        assert line.startswith("sidecar iptables: not permitted"), line
        assert "CAP_NET_ADMIN" in line and "init container" in line and "NET_ADMIN capability" in line, line
    assert nat(ns) == before


def test_a_dry_run_without_permission_shows_the_full_rules(lab: Lab, config_dir: Path) -> None:
    ns = lab.namespace()
    config = str(write_config(config_dir, inbound=False))
    result = sidecar(ns, "-c", config, "--dry-run", user=APP_UID)
    assert result.returncode == 0, result.stderr
    assert "cannot read the current IPv4 nat table" in result.stderr
    assert "showing the full rules, hooks included" in result.stderr
    (restore,) = sections(result.stdout).values()
    assert restore[-2:] == ["-A OUTPUT -p tcp -j SIDECAR_OUTPUT", "COMMIT"]


def test_without_the_iptables_tools_it_names_the_package(lab: Lab, config_dir: Path, tmp_path: Path) -> None:
    ns = lab.namespace()
    config = str(write_config(config_dir, inbound=False))
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing there
    for args in (("-c", config), ("--clean",)):
        result = sidecar(ns, *args, env=env)
        assert result.returncode == 1, result
        assert result.stderr.splitlines() == [
            "sidecar iptables: iptables-restore not found on PATH: install the iptables package "
            "(e.g. apt-get install iptables)"
        ]


def test_a_bad_config_is_reported_with_file_and_line(lab: Lab, config_dir: Path) -> None:
    ns = lab.namespace()
    (config_dir / "sidecar.yaml").write_text("kind: Sidecar\nservice: web\ncapture: {proxy_uid: -1}\n")
    result = sidecar(ns, "-c", str(config_dir))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{config_dir}/sidecar.yaml:3: capture.proxy_uid: "), result.stderr
    assert "SIDECAR" not in "\n".join(nat(ns))


@pytest.mark.skipif(
    not (shutil.which("iptables-legacy-restore") and shutil.which("iptables-nft-restore")),
    reason="needs both iptables backends' tools to choose between them",
)
def test_the_backend_already_in_use_is_the_one_written_to(lab: Lab, config_dir: Path) -> None:
    config = str(write_config(config_dir, inbound=False))
    for used, other in (("legacy", "nft"), ("nft", "legacy")):
        ns = lab.namespace()
        ns.run(f"iptables-{used}-restore", input="*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p 255 -j DROP\nCOMMIT\n")
        untouched = saved(ns, f"iptables-{other}-save")
        result = sidecar(ns, "-c", config)
        assert result.returncode == 0, result.stderr
        assert f"iptables-{used}-restore" in result.stdout
        assert "-A OUTPUT -p tcp -j SIDECAR_OUTPUT" in saved(ns, f"iptables-{used}-save", "-t", "nat")
        assert saved(ns, f"iptables-{other}-save") == untouched
        assert sidecar(ns, "--clean").returncode == 0
        assert "SIDECAR" not in "\n".join(saved(ns, f"iptables-{used}-save"))
