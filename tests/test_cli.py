"""The command line as an operator uses it: exit codes, `check` output, `version`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
