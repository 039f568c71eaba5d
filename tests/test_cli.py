"""The command line as an operator uses it: exit codes, `check` output, `version`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from textwrap import dedent

SIDECAR = [sys.executable, "-m", "sidecar"]
REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIDECAR, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_version() -> None:
    result = run("version")
    assert result.returncode == 0
    assert result.stdout.startswith("sidecar ")


def test_usage_error_exits_2() -> None:
    assert run("frobnicate").returncode == 2
    assert run().returncode == 2


def test_check_accepts_the_example_mesh_config() -> None:
    result = run("check", "-c", "mesh-config")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_prints_every_error_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "sidecar.yaml").write_text("kind: Sidecar\nservice: web\ndrain_timeout: 5 parsecs\n")
    (config / "services.yaml").write_text(
        "kind: Service\n"
        "name: orders\n"
        "endpoints:\n"
        "  - address: 10.0.0.1:99999\n"
        "retries: {attempts: 99}\n"
        "---\n"
        "kind: Route\n"
        "host: shop\n"
        "rules:\n"
        "  - to: [{service: nope}]\n"
    )
    result = run("check", "-c", str(config))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    prefix_s = f"{config}/sidecar.yaml"
    prefix_v = f"{config}/services.yaml"
    assert any(line.startswith(f"{prefix_s}:1: tls: field required (") for line in lines), lines
    assert any(line.startswith(f"{prefix_s}:3: drain_timeout: ") for line in lines), lines
    assert any(line.startswith(f"{prefix_v}:4: endpoints[0].address: ") for line in lines), lines
    assert any(line.startswith(f"{prefix_v}:5: retries.attempts: must be at most 10") for line in lines), lines
    assert any(line.startswith(f"{prefix_v}:10: rules[0].to[0].service: ") for line in lines), lines
    assert len(lines) == 5, lines


def test_run_with_a_bad_config_exits_1(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("kind: Sidecar\n")
    result = run("run", "-c", str(tmp_path))
    assert result.returncode == 1
    assert "service" in result.stderr


def test_missing_config_directory_is_named_without_a_line_number(tmp_path: Path) -> None:
    missing = tmp_path / "mesh-config"
    for command in ("check", "run"):
        result = run(command, "-c", str(missing))
        assert result.returncode == 1, command
        assert result.stderr.splitlines()[0] == f"{missing}: config directory not found", result.stderr


def test_check_reports_a_newcomers_mistakes_of_every_kind_in_one_run(tmp_path: Path) -> None:
    """A typo'd field, bad durations, a route to a service that does not exist (in a Route with an
    error of its own), a certificate file that is not there and a file that is not YAML: one run
    names them all, and nothing else."""
    from sidecar.certs import init_ca, issue_workload

    config = tmp_path / "mesh-config"
    init_ca("mesh.local", tmp_path / "ca")
    issue_workload(tmp_path / "ca", "spiffe://mesh.local/ns/default/sa/frontend", config / "certs")
    (config / "sidecar.yaml").write_text(
        dedent(
            """\
            kind: Sidecar
            service: frontend
            tls:
              cert: certs/frontend.pem  # the file is certs/cert.pem
              key: certs/key.pem
              ca: certs/ca.pem
            inbound: {listen: 0.0.0.0:15006, app: 127.0.0.1:8080}
            drain_timeout: 20
            """
        )
    )
    (config / "services.yaml").write_text(
        dedent(
            """\
            kind: Service
            name: orders
            load_balancr: round_robin
            endpoints:
              - address: orders.default.svc:15006
            timeouts:
              request: 2 seconds
            """
        )
    )
    (config / "routes.yaml").write_text(
        dedent(
            """\
            kind: Route
            host: shop
            rules:
              - match: {path_prefix: /api}
                to: [{service: order}]
                timeout: 5
            """
        )
    )
    (config / "notes.yaml").write_text("payments: [wip\n")
    result = run("check", "-c", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        f"{config}/notes.yaml:2: yaml: invalid YAML: expected ',' or ']', but got '<stream end>'"
        " (while parsing a flow sequence at line 1)",
        f"{config}/routes.yaml:5: rules[0].to[0].service: route to unknown service 'order' (did you mean 'orders'?)",
    ]
    assert lines[2].startswith(f"{config}/routes.yaml:6: rules[0].timeout: invalid duration 5 "), lines
    assert lines[3] == f"{config}/services.yaml:3: load_balancr: unknown field (did you mean 'load_balancer'?)"
    assert lines[4].startswith(f"{config}/services.yaml:7: timeouts.request: invalid duration '2 seconds' "), lines
    assert lines[5].startswith(f"{config}/sidecar.yaml:4: tls.cert: cannot read "), lines
    assert lines[5].endswith("certs/frontend.pem: No such file or directory"), lines
    assert lines[6].startswith(f"{config}/sidecar.yaml:8: drain_timeout: invalid duration 20 "), lines
    assert len(lines) == 7, lines


def test_check_and_run_help_say_what_the_config_option_is_and_its_default() -> None:
    for command in ("check", "run"):
        result = run(command, "-h")
        assert result.returncode == 0
        text = " ".join(result.stdout.split())  # argparse wraps to the terminal width
        assert "-c DIR, --config DIR config directory (default $SIDECAR_CONFIG, else ./mesh-config)" in text, text


def test_iptables_help_explains_each_flag() -> None:
    result = run("iptables", "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    for words in ("-c DIR", "--dry-run", "iptables-restore format", "--clean", "CAP_NET_ADMIN", "NET_ADMIN"):
        assert words in help_text, words


def test_iptables_with_a_bad_config_exits_1_before_touching_anything(tmp_path: Path) -> None:
    """The config is read first, so this needs no privilege (the real rules: tests/e2e/test_iptables_netns.py)."""
    (tmp_path / "sidecar.yaml").write_text("kind: Sidecar\nservice: web\ncapture: {mode: sideways}\n")
    for flags in ((), ("--dry-run",)):
        result = run("iptables", "-c", str(tmp_path), *flags)
        assert result.returncode == 1
        assert result.stderr.startswith(f"{tmp_path}/sidecar.yaml:3: capture.mode: "), result.stderr
        assert result.stdout == ""
    missing = tmp_path / "nowhere"
    result = run("iptables", "-c", str(missing))
    assert (result.returncode, result.stderr.splitlines()[0]) == (1, f"{missing}: config directory not found")
    assert run("iptables", "--frobnicate").returncode == 2
