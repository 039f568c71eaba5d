#!/usr/bin/env bash
# Make .venv ready for the given pip extras (e.g. "test" or "demo"), and install the OS packages
# the tests drive when they are missing: curl, nginx and its stream module, h2load, wrk,
# iptables-restore (`sidecar iptables`), ip (network namespaces), tcpdump, redis-server and
# redis-cli. Safe to run again.
# pip's output goes to .venv/install.log, shown only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
PY="${PYTHON:-python3}"

need_apt=()
if [ "$extras" = "test" ]; then
  for tool in curl:curl nginx:nginx-light h2load:nghttp2-client wrk:wrk iptables-restore:iptables ip:iproute2 \
    tcpdump:tcpdump redis-server:redis-server redis-cli:redis-tools; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
  done
  # nginx's stream module (TCP proxying) is a file, not a command
  [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing OS packages: ${need_apt[*]}" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >&2
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$extras"
log=".venv/install.log"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing sidecar and its $extras packages into .venv (pip's output: $log)" >&2
  if ! {
    .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
      .venv/bin/python -m pip install --disable-pip-version-check -e ".[$extras]"
  } >"$log" 2>&1; then
    cat "$log" >&2
    echo "bootstrap: pip install failed (its output is above, and in $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
