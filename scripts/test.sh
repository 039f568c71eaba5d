#!/usr/bin/env bash
# Run every check: ruff, mypy, the docs site (mkdocs build --strict: no broken link, no missing
# page), then the whole pytest suite (unit and end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/python -m ruff check sidecar tests bench
.venv/bin/python -m mypy
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --quiet --site-dir .venv/docs-site
.venv/bin/python -m pytest -q "$@"
