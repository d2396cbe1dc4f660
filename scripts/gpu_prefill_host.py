"""The host's cost of launching an eager (prefill) step: the time `launch` takes on the host, the time the GPU
then needs to finish, and a cProfile of the launch by own time. Also the host cost of one Triton launch.

    PYTHONPATH=$(pwd) python3 scripts/gpu_prefill_host.py internlm2_5-7b [--num 4] [--len 230]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

import torch

from interndeploy.bench.shapes import shape_model_dir
from interndeploy.config import EngineConfig
from interndeploy.engine.llm_engine import LLMEngine
from interndeploy.engine.request import EngineRequest
from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.kernels.rms_norm import rms_norm
from interndeploy.model_dir import load_model_info
from interndeploy.tokenizer import Tokenizer


def triton_launch_us(n: int = 2000) -> float:
    x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):
        rms_norm(x, w, 1e-6)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        rms_norm(x, w, 1e-6)
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--num", type=int, default=4)
    ap.add_argument("--len", type=int, default=230)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps({"triton_rms_norm_launch_host_us": triton_launch_us()}), flush=True)
    info = load_model_info(str(shape_model_dir(args.shape)), None, True, False)
    eng = LLMEngine(info, EngineConfig(load_format="dummy", session_len=4096), Tokenizer.from_dir(info.path))
    vocab = int(info.config["vocab_size"])
    launch = eng.executor.launch
    record: dict = {}

    def timed_launch(sched):
        torch.cuda.synchronize()
        prof = record.get("prof")
        t = time.perf_counter()
        if prof is not None and sched.num_prefill_tokens:
            prof.enable()
        out = launch(sched)
        if prof is not None:
            prof.disable()
        host = time.perf_counter() - t
        torch.cuda.synchronize()
        if sched.num_prefill_tokens:
            row = {"prefill": sched.num_prefill_tokens, "decode": sched.num_decode_tokens,
                   "launch_host_ms": host * 1e3, "launch_to_idle_ms": (time.perf_counter() - t) * 1e3}
            record.setdefault("rows", []).append(row)
        return out

    eng.executor.launch = timed_launch
    gen = torch.Generator().manual_seed(0)
    for r in range(args.rounds + 1):
        if r == args.rounds:
            record["prof"] = cProfile.Profile()
        for i in range(args.num):
            ids = torch.randint(10, vocab, (args.len,), generator=gen).tolist()
            eng.add_request(EngineRequest(f"{r}-{i}", ids, SamplingParams(max_new_tokens=2, ignore_eos=True)))
        while eng.has_work:
            eng.step()
    for row in record["rows"]:
        print(json.dumps(row), flush=True)
    buf = io.StringIO()
    pstats.Stats(record["prof"], stream=buf).sort_stats("tottime").print_stats(30)
    print("\n".join(buf.getvalue().splitlines()[:60]))
    buf = io.StringIO()
    pstats.Stats(record["prof"], stream=buf).sort_stats("cumtime").print_stats(30)
    print("\n".join(buf.getvalue().splitlines()[:60]))


if __name__ == "__main__":
    main()
