"""Small TP all-reduces over symmetric memory (interndeploy/one_shot_all_reduce.py): every rank agrees on the
path (NCCL when any rank cannot make the buffer, or off GPUs), and on two GPUs the one-shot sums equal NCCL's,
eagerly and inside a CUDA graph."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp


def _cpu_worker(rank: int, port: int, env_value: str, results) -> None:
    if env_value:
        os.environ["INTERNDEPLOY_TP_ALL_REDUCE"] = env_value
    from interndeploy import distributed
    from interndeploy.one_shot_all_reduce import OneShotAllReduce

    state = distributed.init_distributed(rank=rank, world_size=2, master_addr="127.0.0.1", master_port=port,
                                         device=torch.device("cpu"), tp_size=2, ep_size=1, ep_tokens_replicated=True)
    def make(cls, device):  # rank 0 fails to map the buffer, rank 1 succeeds
        if rank == 0:
            raise RuntimeError("no peer access")
        return "made"

    OneShotAllReduce._make = classmethod(make)
    try:
        made = OneShotAllReduce.create(torch.device("cuda", rank), state.cpu_group, True)
        x = torch.full((4,), float(rank + 1))
        distributed.tp_all_reduce(x)  # NCCL's (here gloo's) path: state.one_shot stays None off GPUs
        results[rank] = (made is None, state.one_shot is None, x.tolist())
    finally:
        distributed.destroy_distributed()


@pytest.mark.parametrize("env_value", ["", "nccl"])
def test_ranks_agree_to_stay_on_the_process_group(env_value: str) -> None:
    """Rank 0 cannot make the buffer (or the env says nccl) and rank 1 can: both stay on the process group."""
    from interndeploy.distributed import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_cpu_worker, args=(free_port(), env_value, results), nprocs=2)
        assert dict(results) == {0: (True, True, [3.0] * 4), 1: (True, True, [3.0] * 4)}


def test_takes_only_whole_words_that_fit() -> None:
    """The one-shot kernel moves 4-byte words: a bf16 tensor of odd length stays on the process group."""
    from interndeploy.one_shot_all_reduce import MAX_BYTES, OneShotAllReduce

    path = OneShotAllReduce(torch.empty(MAX_BYTES, dtype=torch.uint8), "unused")
    assert path.takes(torch.ones(2, dtype=torch.bfloat16))
    assert not path.takes(torch.ones(3, dtype=torch.bfloat16))
    assert path.takes(torch.ones(MAX_BYTES // 2, dtype=torch.bfloat16))
    assert not path.takes(torch.ones(MAX_BYTES // 2 + 2, dtype=torch.bfloat16))
    assert not path.takes(torch.ones(4, 2, dtype=torch.float32).t())  # not contiguous


def _gpu_worker(rank: int, port: int, results) -> None:
    from interndeploy import distributed

    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    device = torch.device("cuda", rank)
    state = distributed.init_distributed(rank=rank, world_size=2, master_addr="127.0.0.1", master_port=port,
                                         device=device, tp_size=2, ep_size=1, ep_tokens_replicated=True)
    try:
        one_shot = state.one_shot
        out = {"made": one_shot is not None}
        for n in (1, 4096 + 3, 4096 + 4, 262144):  # odd byte counts (NCCL's path), and the largest one-shot
            x = torch.randn(n, dtype=torch.bfloat16, device=device, generator=torch.Generator(device).manual_seed(n))
            x = x * (rank + 1)
            want = x.float().clone()
            torch.distributed.all_reduce(want)
            got = distributed.tp_all_reduce(x.clone())
            out[f"eager{n}"] = bool(torch.allclose(got.float(), want, atol=1e-2, rtol=1e-2))
        y = torch.full((4096,), float(rank + 1), dtype=torch.bfloat16, device=device)
        graph = torch.cuda.CUDAGraph()
        distributed.tp_all_reduce(y.clone())  # warm up outside the capture
        with torch.cuda.graph(graph):
            for _ in range(3):
                distributed.tp_all_reduce(y)
        y.fill_(float(rank + 1))
        graph.replay()
        torch.cuda.synchronize()
        out["graph"] = bool((y == 12.0).all())  # (1 + 2) * 2 * 2: three all-reduces in a row
        results[rank] = out
    finally:
        distributed.destroy_distributed()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_one_shot_sums_like_nccl_on_two_gpus() -> None:
    from interndeploy.distributed import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gpu_worker, args=(free_port(), results), nprocs=2)
        for rank in (0, 1):
            assert all(results[rank].values()), results[rank]
