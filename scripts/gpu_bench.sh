#!/usr/bin/env bash
# Side-by-side speed on a GPU: interndeploy bench (latency with roofline, throughput) and plain
# transformers (the anchor script), one shape, one run. Usage: scripts/gpu_bench.sh SHAPE ANCHOR_PY
set -uo pipefail
SHAPE=${1:-internlm2_5-7b}
ANCHOR=${2:-}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$(pwd)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m interndeploy.cli.main bench latency "$SHAPE" --input-len 128 --output-len 256 --json
python3 -m interndeploy.cli.main bench throughput "$SHAPE" --input-len 128 --output-len 256 --num-prompts 256 \
  --concurrency 32 --json
python3 -m interndeploy.cli.main bench throughput "$SHAPE" --input-len 128 --output-len 256 --num-prompts 512 --json
if [ -n "$ANCHOR" ]; then
  python3 "$ANCHOR" --model "$SHAPE" --batch 1 32 --prompt 128 --new 256
fi
