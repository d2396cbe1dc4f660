"""`interndeploy bench` on a tiny shape (figures are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def bench(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "interndeploy.cli.main", "bench", *args, "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1].replace("NaN", "null"))


def test_bench_throughput_reports_vllm_figures():
    out = bench("throughput", "internlm2-tiny", "--num-prompts", "6", "--input-len", "24", "--output-len", "8",
                "--range-ratio", "0.5", "--concurrency", "3")
    assert out["completed"] == 6
    for key in ("req_per_s", "input_tok_per_s", "output_tok_per_s", "ttft_ms_p99", "tpot_ms_mean", "itl_ms_p50"):
        assert out[key] > 0


def test_bench_latency_reports_roofline_fields():
    out = bench("latency", "internlm2-tiny", "--input-len", "16", "--output-len", "8")
    assert out["decode_ms_per_token"] > 0 and "fraction_of_roofline" in out
