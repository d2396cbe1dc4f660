"""The engine's host cost per step with the model taken out: the executor's launch is replaced by one that
returns random tokens at once, so what is left is scheduling, step inputs, postprocessing, detokenizing and the
asyncio hand-off: the time a GPU would wait for Python if it were infinitely fast. Runs on the CPU.

    PYTHONPATH=$(pwd) python3 scripts/host_overhead.py [--num-prompts 512] [--input-len 200] [--output-len 180]
        [--profile]     # cProfile of the engine thread's steps alone (no asyncio), by own time
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import time

from interndeploy.bench.throughput import RandomDataset, open_engine, run_throughput
from interndeploy.config import EngineConfig
from interndeploy.engine.request import EngineRequest
from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.worker.async_output import AsyncStepOutput, ModelRunnerOutput


def instant_launch(vocab: int, seed: int = 0):
    rng = random.Random(seed)

    def launch(sched):
        sampled = {item.seq.seq_id: rng.randrange(10, vocab) for item in sched.scheduled if item.samples}
        return AsyncStepOutput.done(ModelRunnerOutput(sampled=sampled))

    return launch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="internlm2-tiny")
    ap.add_argument("--num-prompts", type=int, default=512)
    ap.add_argument("--input-len", type=int, default=200)
    ap.add_argument("--output-len", type=int, default=180)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    engine = open_engine(args.shape, EngineConfig(max_batch_size=args.num_prompts, session_len=4096,
                                                  cache_max_entry_count=0.5, cpu_kv_budget_gib=4.0))
    vocab = int(engine.info.config["vocab_size"])
    engine.engine.executor.launch = instant_launch(vocab)
    try:
        data = RandomDataset(args.input_len, args.output_len, 0.0, args.num_prompts)
        figures = run_throughput(engine, data, None)  # through the asyncio front (requests trickle in)
        print(json.dumps({k: figures[k] for k in ("req_per_s", "engine_steps", "step_ms_mean", "host_ms_per_step")}),
              flush=True)
        engine._stopping = True  # the engine thread stops; this thread steps the engine alone, all admitted at once
        engine._wake.set()
        engine._thread.join()
        eng = engine.engine
        for profiled in (False, True) if args.profile else (False,):
            for i, (ids, n) in enumerate(data.sample(vocab)):
                params = SamplingParams(max_new_tokens=n, ignore_eos=True)
                eng.add_request(EngineRequest(f"{profiled}-{i}", ids, params))
            prof = cProfile.Profile()
            steps, t = 0, time.perf_counter()
            if profiled:
                prof.enable()
            while eng.has_work:
                eng.step()
                steps += 1
            prof.disable()
            if profiled:
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            else:
                ms = (time.perf_counter() - t) / steps * 1e3
                print(json.dumps({"direct_steps": steps, "direct_ms_per_step": ms}), flush=True)
    finally:
        engine._stopping = False
        engine.shutdown()


if __name__ == "__main__":
    main()
