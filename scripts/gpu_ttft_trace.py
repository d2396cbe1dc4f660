"""Where time to first token goes at low concurrency: `bench throughput --concurrency C` with the engine's steps
traced (launch and token-read times, prefill tokens and decode rows of each step) beside every request's send
and first-token times. Prints the summary, then per request the steps between its send and its first token.

    PYTHONPATH=$(pwd) python3 scripts/gpu_ttft_trace.py internlm2_5-7b [--concurrency 4] [--input-len 230]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import torch

from interndeploy.bench.throughput import RandomDataset, _run, open_engine
from interndeploy.config import EngineConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--input-len", type=int, default=230)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--range-ratio", type=float, default=0.0)
    ap.add_argument("--show", type=int, default=12, help="requests whose timeline is printed")
    args = ap.parse_args()
    engine = open_engine(args.shape, EngineConfig())
    eng = engine.engine
    vocab = int(engine.info.config["vocab_size"])
    steps: list[dict] = []
    launch, complete = eng.executor.launch, eng._complete

    def traced_launch(sched):
        t = time.perf_counter()
        out = launch(sched)
        steps.append({"launch": t, "launched": time.perf_counter(), "prefill": sched.num_prefill_tokens,
                      "decode": sched.num_decode_tokens, "sched": id(sched)})
        return out

    def traced_complete(step, touched):
        t = time.perf_counter()
        complete(step, touched)
        for s in reversed(steps):
            if s["sched"] == id(step.sched):
                s["read"], s["done"] = t, time.perf_counter()
                break

    eng.executor.launch, eng._complete = traced_launch, traced_complete
    for warm in (RandomDataset(16, 4, 0.0, 2, seed=1), RandomDataset(args.input_len, 4, 0.0, 4, seed=1)):
        asyncio.run(_run(engine, warm.sample(vocab), None))
    steps.clear()
    data = RandomDataset(args.input_len, args.output_len, args.range_ratio, args.num_prompts)
    timings = asyncio.run(_run(engine, data.sample(vocab), args.concurrency))
    ttfts = sorted(t.ttft * 1e3 for t in timings)
    print(json.dumps({"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      "ttft_ms_mean": sum(ttfts) / len(ttfts), "ttft_ms_p50": ttfts[len(ttfts) // 2],
                      "ttft_ms_max": ttfts[-1], "async": eng.async_scheduling}), flush=True)
    t0 = min(t.start for t in timings)
    ms = lambda t: round((t - t0) * 1e3, 2)  # noqa: E731
    by_start = sorted(timings, key=lambda t: t.start)
    for r in by_start[: args.show]:
        first = r.token_times[0]
        print(f"request sent {ms(r.start)} first token {ms(first)} ttft {round((first - r.start) * 1e3, 2)}")
        for s in steps:
            if s["launch"] >= r.start - 0.004 and s["launch"] <= first:
                print(f"   step launch {ms(s['launch'])}..{ms(s['launched'])} read {ms(s.get('read', t0))}.."
                      f"{ms(s.get('done', t0))} prefill {s['prefill']} decode {s['decode']}")
    engine.shutdown()


if __name__ == "__main__":
    main()
