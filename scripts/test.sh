#!/usr/bin/env bash
# The test command: set up .venv if needed, lint, run the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check interndeploy tests
.venv/bin/python -m pytest -q -x --timeout=900 "$@"
