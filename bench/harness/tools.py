"""External tools the benchmark needs (nginx, wrk, h2load, taskset; for `tcp`: nginx's stream module,
redis-server, redis-benchmark, openssl), installed with apt when missing.

Only Debian packages are installed here, and only when a tool is missing and we are root. The tool
versions end up in the results so two runs can be compared knowingly.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# tool -> Debian package that ships it
TOOLS = {
    "nginx": "nginx-light",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "taskset": "util-linux",
    "openssl": "openssl",  # the nginx pair's server certificate, re-signed with a DNS name
}
TCP_TOOLS = {
    "nginx": "nginx-light",
    "redis-server": "redis-server",
    "redis-benchmark": "redis-tools",
    "openssl": "openssl",
    "taskset": "util-linux",
}
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
STREAM_MODULE_PACKAGE = "libnginx-mod-stream"
EXTRA_PATH = ("/usr/sbin", "/sbin")


def find(tool: str) -> str | None:
    """Absolute path of a tool, also looking in the sbin folders a non-login PATH may lack."""
    found = shutil.which(tool)
    if found:
        return found
    for folder in EXTRA_PATH:
        candidate = os.path.join(folder, tool)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_tools(tools: dict[str, str] | None = None) -> dict[str, str]:
    """Return {tool: path}, installing missing ones with apt-get first (as root)."""
    tools = TOOLS if tools is None else tools
    missing = [tool for tool in tools if find(tool) is None]
    if missing:
        install([tools[tool] for tool in missing])
    paths = {tool: find(tool) for tool in tools}
    still_missing = [tool for tool, path in paths.items() if path is None]
    if still_missing:
        raise SystemExit(f"bench: cannot find {', '.join(still_missing)} even after apt-get install")
    return {tool: path for tool, path in paths.items() if path}


def ensure_tcp_tools() -> dict[str, str]:
    """The `tcp` scenario's tools, and nginx's stream module under the key "stream-module"."""
    paths = ensure_tools(TCP_TOOLS)
    if not os.path.exists(STREAM_MODULE):
        install([STREAM_MODULE_PACKAGE])
    if not os.path.exists(STREAM_MODULE):
        raise SystemExit(f"bench: no {STREAM_MODULE} even after apt-get install {STREAM_MODULE_PACKAGE}")
    return {**paths, "stream-module": STREAM_MODULE}


def install(packages: list[str]) -> None:
    """apt-get update and install the given packages; explain what to do when not root."""
    if os.geteuid() != 0:
        raise SystemExit(f"bench: missing tools; run as root or: apt-get install -y {' '.join(packages)}")
    print(f"bench: installing {' '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", *packages], check=True, env=env)


def versions(paths: dict[str, str]) -> dict[str, str]:
    """One-line version strings of the load generators and nginx, for the results file."""
    flags = {"nginx": "-v", "wrk": "--version", "h2load": "--version", "redis-benchmark": "--version"}
    flags["openssl"] = "version"
    commands = {tool: [paths[tool], flag] for tool, flag in flags.items() if tool in paths}
    found = {}
    for tool, argv in commands.items():
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        text = (result.stdout + result.stderr).strip().splitlines()
        found[tool] = text[0].strip() if text else "unknown"
    return found
