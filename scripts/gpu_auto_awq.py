"""Wall time of `interndeploy lite auto_awq` at a real shape on a GPU (issue 6), run as a user runs it.

A checkpoint with random weights at the shape is written first (bf16 safetensors shards, a small trained
tokenizer), then a local text file of 128 x 2048+ tokens serves as the calibration set, and the CLI quantizes
it. The output is loaded back by `bench latency` (AWQ detected from its quantization_config).

    PYTHONPATH=$(pwd) python3 scripts/gpu_auto_awq.py [--shape internlm2_5-7b] [--search-scale] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import string
import subprocess
import sys
import time
from pathlib import Path

from interndeploy.bench.shapes import SHAPES
from interndeploy.testing.tiny_models import build_internlm2_dir

_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "vocab_size", "max_position_embeddings", "rope_theta")


def build_checkpoint(shape: str, out: Path) -> float:
    t = time.perf_counter()
    cfg = {k: SHAPES[shape][k] for k in _KEYS}
    build_internlm2_dir(out, **cfg, num_shards=8, torch_dtype="bfloat16")
    return time.perf_counter() - t


def write_calib_text(path: Path, words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5000)]
    lines = [" ".join(rng.choices(vocab, k=16)) + "." for _ in range(words // 16)]
    path.write_text("\n".join(lines), encoding="utf-8")


def run(cmd: list[str], timeout: float) -> tuple[float, int, str]:
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:  # what it printed so far (the progress bar's rate) still counts
        rc, out = 124, "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    return time.perf_counter() - t, rc, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="internlm2_5-7b")
    ap.add_argument("--root", default="/tmp/awq-wall")
    ap.add_argument("--search-scale", action="store_true")
    ap.add_argument("--timeout", type=float, default=420)
    args = ap.parse_args()
    root = Path(args.root)
    model, calib, work = root / "model", root / "calib.txt", root / "awq"
    if not (model / "config.json").exists():
        print(json.dumps({"built_checkpoint_s": build_checkpoint(args.shape, model)}), flush=True)
    write_calib_text(calib, words=600_000)
    cli = [sys.executable, "-m", "interndeploy.cli.main"]
    for search in (False, True) if args.search_scale else (False,):
        out_dir = work.with_name(f"awq-search{int(search)}")
        cmd = [*cli, "lite", "auto_awq", str(model), "--work-dir", str(out_dir), "--calib-dataset", str(calib),
               "--calib-samples", "128", "--calib-seqlen", "2048", "--search-scale", str(search)]
        wall, rc, out = run(cmd, args.timeout)
        progress = [ln for ln in out.replace("\r", "\n").splitlines() if "auto_awq" in ln]
        print(json.dumps({"auto_awq": args.shape, "search_scale": search, "calib": "128 x 2048",
                          "wall_s": round(wall, 1), "rc": rc, "last": progress[-2:] or out[-1500:]}), flush=True)
        if rc != 0 or search:
            continue
        for dtype in ("auto", "float16"):  # auto: bf16 (torch's int4 kernel); float16 as the checkpoint
            wall, rc, out = run([*cli, "bench", "latency", str(out_dir), "--input-len", "128", "--output-len", "128",
                                 "--dtype", dtype, "--json"], 150)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            print(f"dtype {dtype}: " + (lines[-1] if lines else f"failed {out[-1500:]}"), flush=True)

if __name__ == "__main__":
    main()
