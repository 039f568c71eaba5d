#!/usr/bin/env bash
# Run every check: ruff, mypy, then the whole pytest suite (unit and end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/python -m ruff check sidecar tests bench
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q "$@"
