"""Run dp engines (attention data-parallel, experts shared) as separate processes, for tests."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Any


def _dp_engine(rank: int, dp: int, model_dir: str, port: int, prompts: list[str], max_new_tokens: int,
               engine_kwargs: dict[str, Any], results: Any, done: Any) -> None:
    os.environ["LMDEPLOY_DP_MASTER_ADDR"] = "127.0.0.1"  # the seed's spelling
    os.environ["LMDEPLOY_DP_MASTER_PORT"] = str(port)
    from interndeploy import EngineConfig, GenerationConfig, pipeline

    try:
        cfg = EngineConfig(dp=dp, ep=dp, dp_rank=rank, **engine_kwargs)
        pipe = pipeline(model_dir, backend_config=cfg)
        try:
            gen = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
            outs = pipe(prompts, gen_config=gen, do_preprocess=False) if prompts else []
            results.put((rank, [o.token_ids for o in outs]))
            done.wait(timeout=120)  # closing early would leave the peers without their expert group
        finally:
            pipe.close()
    except BaseException as e:
        results.put((rank, f"{type(e).__name__}: {e}"))


def run_dp_engines(model_dir: Path, prompts: list[list[str]], max_new_tokens: list[int],
                   timeout: float = 180.0, **engine_kwargs: Any) -> dict[int, Any]:
    """Engine k (of len(prompts)) generates prompts[k] greedily; {rank: token ids per prompt, or an error}.
    The engines step together until all are done: one that finishes early keeps joining its peers' MoE layers."""
    from interndeploy.distributed import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    done = ctx.Event()
    port = free_port()
    dp = len(prompts)
    procs = [ctx.Process(target=_dp_engine, args=(k, dp, str(model_dir), port, prompts[k], max_new_tokens[k],
                                                     engine_kwargs, results, done), daemon=True) for k in range(dp)]
    for p in procs:
        p.start()
    try:
        return dict(results.get(timeout=timeout) for _ in procs)
    finally:
        done.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
