#!/usr/bin/env bash
# Create .venv (once) with CPU torch first, then the package and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import interndeploy, torch, pytest, schemathesis, hypothesis, psutil, gradio, selenium, ray" >/dev/null 2>&1; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.13.0          # the CPU build; install before anything that asks for torch
  .venv/bin/pip install -q -e ".[test,ray]"
fi
