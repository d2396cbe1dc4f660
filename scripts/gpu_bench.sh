#!/usr/bin/env bash
# Side-by-side speed on a GPU: interndeploy bench (latency with roofline, the throughput rows of issue 5) and
# plain transformers (the anchor script), one shape, one run. Usage: scripts/gpu_bench.sh SHAPE ANCHOR_PY
set -uo pipefail
SHAPE=${1:-internlm2_5-7b}
ANCHOR=${2:-}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$(pwd)
B="python3 -m interndeploy.cli.main bench"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$B latency "$SHAPE" --input-len 128 --output-len 256 --json
$B throughput "$SHAPE" --input-len 200 --output-len 180 --num-prompts 500 --json
$B throughput "$SHAPE" --input-len 462 --output-len 256 --num-prompts 500 --json
$B throughput "$SHAPE" --input-len 230 --output-len 256 --num-prompts 64 --concurrency 4 --json
$B throughput "$SHAPE" --input-len 1024 --output-len 1 --num-prompts 16 --json  # prefill: MFU by hand
if [ -n "$ANCHOR" ]; then
  python3 "$ANCHOR" --model "$SHAPE" --batch 1 32 --prompt 128 --new 256
fi
