#!/usr/bin/env bash
# The main job: set up .venv if needed, build a small random-weight InternLM2 model
# directory (until the embedded demo model lands), and chat with it through pipeline().
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m interndeploy.testing.main_job "$@"
