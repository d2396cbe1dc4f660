"""Where a decode step's time goes on a GPU, for one model shape and a few batch sizes:

- wall ms per engine step (LLMEngine.step, the whole loop: schedule, inputs, graph replay, sampling, readback,
  detokenizing), with async scheduling off and on;
- GPU ms per step (the sum of the kernels' durations in a torch.profiler trace) and the top kernels;
- the host's hot spots (cProfile, by own time).

    PYTHONPATH=$(pwd) python3 scripts/gpu_profile.py SHAPE [--bs 1 64] [--steps 64] [--eager-mode] [--model-format fp8]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from interndeploy.bench.shapes import shape_model_dir
from interndeploy.config import EngineConfig
from interndeploy.engine.llm_engine import LLMEngine
from interndeploy.engine.request import EngineRequest
from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.model_dir import load_model_info
from interndeploy.tokenizer import Tokenizer


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _fill(eng: LLMEngine, vocab: int, bs: int, prompt_len: int, out_len: int, tag: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for i in range(bs):
        ids = torch.randint(10, vocab, (prompt_len,), generator=gen).tolist()
        eng.add_request(EngineRequest(f"{tag}-{i}", ids, SamplingParams(max_new_tokens=out_len, ignore_eos=True)))
    while any(s.seq.num_output_tokens < 2 for st in eng.requests.values() for s in st.samples):
        eng.step()  # prefill (chunks) and the first decode steps


def _drain(eng: LLMEngine) -> None:
    while eng.has_work:
        eng.step()


TOP_KERNELS = 14


def _kernel_table(prof: profile, steps: int) -> tuple[float, list[tuple[str, float, float]]]:
    """GPU ms per step, and the top kernels: (name, ms per step, launches per step)."""
    per_name: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            per_name[evt.name[:90]] += evt.device_time_total if hasattr(evt, "device_time_total") else evt.cuda_time
            count[evt.name[:90]] += 1
    total = sum(per_name.values()) / steps / 1e3
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:TOP_KERNELS]
    return total, [(name, us / steps / 1e3, count[name] / steps) for name, us in top]


def profile_bs(eng: LLMEngine, vocab: int, bs: int, steps: int, async_on: bool, prompt_len: int = 128) -> dict:
    eng.async_scheduling = async_on
    tag = f"bs{bs}-{'async' if async_on else 'sync'}"
    _fill(eng, vocab, bs, prompt_len, 4 * steps + 16, tag)
    _sync()
    t = time.perf_counter()
    for _ in range(steps):
        eng.step()
    _sync()
    wall = (time.perf_counter() - t) / steps * 1e3
    with profile(activities=[ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            eng.step()
        _sync()
    gpu, top = _kernel_table(prof, steps)
    cp = cProfile.Profile()
    cp.enable()
    for _ in range(steps):
        eng.step()
    cp.disable()
    buf = io.StringIO()
    pstats.Stats(cp, stream=buf).sort_stats("tottime").print_stats(18)
    for rid in list(eng.requests):
        eng.abort_request(rid)
    _drain(eng)
    return {
        "case": tag,
        "wall_ms_per_step": wall,
        "gpu_ms_per_step": gpu,
        "top_kernels_ms": top,
        "host_profile": buf.getvalue().splitlines()[:40],
    }


def profile_prefill(eng: LLMEngine, vocab: int, num: int, length: int) -> dict:
    """`num` prompts of `length` tokens, one output token each: all steps until done, kernels per step."""

    def submit(tag: str) -> None:
        gen = torch.Generator().manual_seed(1)
        for i in range(num):
            ids = torch.randint(10, vocab, (length,), generator=gen).tolist()
            eng.add_request(EngineRequest(f"{tag}-{i}", ids, SamplingParams(max_new_tokens=1, ignore_eos=True)))

    submit("prefill-warm")
    _drain(eng)
    submit("prefill")
    _sync()
    t, steps = time.perf_counter(), 0
    with profile(activities=[ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU]) as prof:
        while eng.has_work:
            eng.step()
            steps += 1
        _sync()
    wall = time.perf_counter() - t
    gpu, top = _kernel_table(prof, steps)
    return {
        "case": f"prefill {num}x{length}",
        "steps": steps,
        "wall_ms": wall * 1e3,
        "gpu_ms_per_step": gpu,
        "prompt_tok_per_s": num * length / wall,
        "top_kernels_ms": top,
    }


def main() -> None:
    global TOP_KERNELS
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--bs", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--eager-mode", action="store_true")
    ap.add_argument("--tp", type=int, default=1, help="tensor parallel: kernels of rank 0")
    ap.add_argument("--prompt-len", type=int, default=128, help="context length the decode steps start from")
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--model-format", default=None, choices=["hf", "awq", "fp8"], help="random weights in this format")
    ap.add_argument("--top", type=int, default=TOP_KERNELS, help="kernels listed per case")
    ap.add_argument("--quant-policy", type=int, default=0, choices=[0, 4, 8], help="KV cache int8 / int4")
    ap.add_argument(
        "--prefill",
        type=int,
        nargs=2,
        metavar=("NUM", "LEN"),
        default=None,
        help="profile prefill of NUM prompts of LEN tokens instead of decode",
    )
    args = ap.parse_args()
    TOP_KERNELS = args.top
    cfg = EngineConfig(
        model_format=args.model_format,
        load_format="dummy",
        eager_mode=args.eager_mode,
        max_batch_size=args.max_batch_size,
        session_len=4096,
        quant_policy=args.quant_policy,
        tp=args.tp,
    )
    info = load_model_info(str(shape_model_dir(args.shape)), None, True, False)
    t = time.perf_counter()
    eng = LLMEngine(info, cfg, Tokenizer.from_dir(info.path))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(json.dumps({"shape": args.shape, "tp": args.tp, "gpu": gpu, "start_s": time.perf_counter() - t}), flush=True)
    if args.prefill:
        print(json.dumps(profile_prefill(eng, int(info.config["vocab_size"]), *args.prefill)), flush=True)
        return
    for bs in args.bs:
        for async_on in (False, True):
            res = profile_bs(eng, int(info.config["vocab_size"]), bs, args.steps, async_on, args.prompt_len)
            host = res.pop("host_profile")
            print(json.dumps(res), flush=True)
            print("\n".join(host), flush=True)


if __name__ == "__main__":
    main()
