"""Tensor-parallel all-reduce latency on the GPUs of one host: NCCL against the symmetric-memory one-shot
(interndeploy/one_shot_all_reduce.py), each call inside a CUDA graph as the decode step runs them.

    PYTHONPATH=$(pwd) python3 scripts/gpu_allreduce.py [WORLD]
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = [4096, 8192, 32768, 131072, 262144]  # bf16 elements: batch 1, 2, 8, 32, 64 at hidden 4096
REPS = 64  # all-reduces per graph (two per layer of a 32-layer model)


def _graph_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (10 * REPS)


def worker(rank: int, world: int, port: int) -> None:
    from interndeploy import distributed

    device = torch.device("cuda", rank)
    state = distributed.init_distributed(rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port,
                                         device=device, tp_size=world, ep_size=1, ep_tokens_replicated=True)
    one_shot = state.one_shot
    for n in SIZES:
        x = torch.full((n,), float(rank + 1), dtype=torch.bfloat16, device=device)
        row = {"elements": n, "KiB": n * 2 // 1024}
        row["nccl_us"] = _graph_us(lambda x=x: dist.all_reduce(x))
        if one_shot is not None and one_shot.takes(x):
            y = torch.full((n,), float(rank + 1), dtype=torch.bfloat16, device=device)
            one_shot(y)
            row["one_shot_correct"] = bool((y == world * (world + 1) / 2).all())
            row["one_shot_us"] = _graph_us(lambda x=x: one_shot(x))
        if rank == 0:
            print(json.dumps(row), flush=True)
    distributed.destroy_distributed()


if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else torch.cuda.device_count()
    from interndeploy.distributed import free_port

    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "world": world}), flush=True)
    mp.spawn(worker, args=(world, free_port()), nprocs=world)
