"""Offline benchmarks through the engine: `bench throughput` and `bench latency`."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, replace

import torch

from ..config import EngineConfig, GenerationConfig
from ..engine.async_engine import AsyncEngine
from ..engine.llm_engine import EngineStats
from .shapes import is_shape_name, param_bytes_read_per_token, shape_model_dir, weight_bytes_read_per_token
from .stats import RequestTiming, summarize


@dataclass(slots=True)
class RandomDataset:
    input_len: int  # mean prompt tokens
    output_len: int  # mean output tokens
    range_ratio: float  # lengths drawn uniformly in [len * (1 - r), len * (1 + r)]
    num_prompts: int
    seed: int = 0

    def sample(self, vocab: int) -> list[tuple[list[int], int]]:
        rng = random.Random(self.seed)

        def draw(n: int) -> int:
            return max(1, rng.randint(int(n * (1 - self.range_ratio)), int(n * (1 + self.range_ratio))))

        hi = max(vocab - 1, 11)
        return [([rng.randint(10, hi) for _ in range(draw(self.input_len))], draw(self.output_len))
                for _ in range(self.num_prompts)]


def open_engine(model: str, cfg: EngineConfig) -> AsyncEngine:
    if is_shape_name(model):
        cfg.load_format = "dummy"
        return AsyncEngine(str(shape_model_dir(model)), cfg, model_name=model)
    return AsyncEngine(model, cfg)


async def _run(engine: AsyncEngine, work: list[tuple[list[int], int]], concurrency: int | None) -> list[RequestTiming]:
    sem = asyncio.Semaphore(concurrency or len(work))

    async def one(ids: list[int], out_len: int) -> RequestTiming:
        async with sem:
            t = RequestTiming(start=time.perf_counter(), num_prompt_tokens=len(ids))
            gen = GenerationConfig(max_new_tokens=out_len, ignore_eos=True)
            async for out in engine.generate(ids, gen):
                t.token_times.append(time.perf_counter())
                t.num_output_tokens = out.num_output_tokens
            return t

    return await asyncio.gather(*(one(ids, n) for ids, n in work))


def run_throughput(engine: AsyncEngine, dataset: RandomDataset, concurrency: int | None) -> dict[str, float]:
    vocab = int(engine.info.config["vocab_size"])
    # warm-up at the dataset's prompt length too: kernels compiled per tile shape (short and long prompts pick
    # different prefill tiles) must not compile inside the measured run
    for warm in (RandomDataset(16, 4, 0.0, 2, seed=1), RandomDataset(dataset.input_len, 4, 0.0, 4, seed=1)):
        asyncio.run(_run(engine, warm.sample(vocab), None))
    work = dataset.sample(vocab)
    before = replace(engine.engine.stats)
    t0 = time.perf_counter()
    timings = asyncio.run(_run(engine, work, concurrency))
    figures = summarize(timings, time.perf_counter() - t0)
    return figures | engine_step_figures(before, engine.engine.stats)


def engine_step_figures(before: EngineStats, after: EngineStats) -> dict[str, float]:
    """Where the engine thread's time went between two snapshots: steps, ms per step, and the part of it spent
    outside the wait for the device's tokens. A low host share says the GPU is the bound; a high one says
    the host is, or that launches blocked on a full CUDA launch queue (eager prefill steps do)."""
    steps = after.num_steps - before.num_steps
    total = after.step_s - before.step_s
    wait = after.device_wait_s - before.device_wait_s
    if steps <= 0:
        return {}
    return {"engine_steps": steps, "step_ms_mean": total / steps * 1e3,
            "host_ms_per_step": (total - wait) / steps * 1e3, "host_fraction": (total - wait) / total,
            "preemptions": after.num_preemptions - before.num_preemptions}


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), as the anchors measure it."""
    if device.type != "cuda":
        return float("nan")
    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize(device)
    bw = 2 * x.numel() / ((time.perf_counter() - t) / 10)
    del x, y
    torch.cuda.empty_cache()
    return bw


def run_latency(engine: AsyncEngine, input_len: int, output_len: int, repeats: int = 3) -> dict[str, float]:
    """Batch-1 decode ms/token and its fraction of the copy-bandwidth roofline."""
    runner = engine.engine.runner
    vocab = int(engine.info.config["vocab_size"])
    run_throughput(engine, RandomDataset(input_len, 8, 0.0, 1, seed=2), None)  # warm-up (and graph capture)
    best = None
    for r in range(repeats):
        timing = asyncio.run(_run(engine, RandomDataset(input_len, output_len, 0.0, 1, seed=3 + r).sample(vocab),
                                  None))[0]
        itl = sorted(timing.itls)[len(timing.itls) // 2] if timing.itls else float("nan")
        best = itl if best is None else min(best, itl)
    elem = torch.tensor([], dtype=runner.dtype).element_size()
    kv = runner.kv
    tp = engine.cfg.tp  # rank 0's runner holds 1/tp of the weights and KV heads; the tp GPUs read in parallel
    kv_bytes_per_token = kv.bytes_per_block // kv.block_size * tp
    avg_context = input_len + output_len / 2
    weights = weight_bytes_read_per_token(engine.info.config, elem)
    if getattr(runner, "weight_format", "hf") != "hf":  # quantized: what the packed parameters hold
        weights = param_bytes_read_per_token(runner.model) * tp
    bytes_per_step = weights + kv_bytes_per_token * avg_context
    bw = copy_bandwidth(runner.device)
    ideal = bytes_per_step / (bw * tp)
    return {
        "tp": tp,
        "decode_ms_per_token": best * 1e3,
        "tok_per_s": 1.0 / best,
        "bytes_read_per_token_GB": bytes_per_step / 1e9,
        "copy_bandwidth_TBps": bw / 1e12,
        "roofline_ms_per_token": ideal * 1e3,
        "fraction_of_roofline": ideal / best,
    }
