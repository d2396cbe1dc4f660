#!/usr/bin/env bash
# The main job: set up .venv if needed, start `interndeploy serve api_server demo` (the embedded
# demo model) and get a chat answer through the OpenAI client.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m interndeploy.testing.main_job "$@"
