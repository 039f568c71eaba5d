#!/usr/bin/env bash
# Run the embedded default: a small mesh on loopback. Extra arguments go to `sidecar demo`.
# Setting up .venv prints one line; pip's own output goes to .venv/install.log (shown if it fails).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh demo
exec .venv/bin/sidecar demo "$@"
