"""Small tensor-parallel all-reduces over PyTorch symmetric memory (one GPU per rank, one host).

A decode step's row-parallel layers all-reduce a few KiB per layer (batch x hidden): NCCL's ring costs a
fixed latency for each, and at batch 1 the 2 x layers of them take a large part of a TP step. PyTorch's
symmetric memory maps one buffer per rank into every peer (CUDA peer-to-peer over NVLink); its one-shot
all-reduce kernel has every rank read all peers' buffers and sum them, synchronised with signal pads, with no
NCCL protocol in between. It runs inside CUDA graphs like any kernel.

Only messages up to MAX_BYTES take this path (a one-shot reads world_size x the message per rank; larger
ones go to NCCL). Multicast (NVLS) is never used: TORCH_SYMM_MEM_DISABLE_MULTICAST is set before the buffer
is made, so the multimem objects some hosts forbid are never created.

Set INTERNDEPLOY_TP_ALL_REDUCE=nccl to keep every all-reduce on NCCL.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger("interndeploy")

MAX_BYTES = 512 * 1024  # batch 64 at hidden 4096 in bf16


class OneShotAllReduce:
    """A symmetric buffer of MAX_BYTES on this rank's GPU and the group it was rendezvoused with."""

    def __init__(self, buffer: torch.Tensor, group_name: str) -> None:
        self.buffer = buffer  # uint8 [MAX_BYTES]
        self.group_name = group_name

    @classmethod
    def create(
        cls, device: torch.device, cpu_group: dist.ProcessGroup | None, one_host: bool
    ) -> OneShotAllReduce | None:
        """Collective (every rank of the default group calls it): the all-reduce, or None on every rank when
        any rank cannot make one (then all of them stay on NCCL). `one_host`: all ranks share this host (peer
        mappings do not reach across nodes)."""
        ok, made = 1, None
        if os.environ.get("INTERNDEPLOY_TP_ALL_REDUCE", "").lower() == "nccl" or device.type != "cuda":
            ok = 0
        elif not one_host:
            ok = 0
        else:
            try:
                made = cls._make(device)
            except Exception as e:  # noqa: BLE001 - any failure falls back to NCCL, on every rank
                logger.info("symmetric-memory all-reduce unavailable (%s: %s); NCCL serves all of them",
                            type(e).__name__, str(e)[:200])
                ok = 0
        agree = torch.tensor([ok], dtype=torch.int64)
        dist.all_reduce(agree, op=dist.ReduceOp.MIN, group=cpu_group)
        if int(agree.item()) == 0:
            return None
        logger.info("small all-reduces (<= %d KiB) through symmetric memory", MAX_BYTES // 1024)
        return made

    @classmethod
    def _make(cls, device: torch.device) -> OneShotAllReduce:
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        import torch.distributed._symmetric_memory as symm_mem

        if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce_out"):
            raise RuntimeError("this torch has no symm_mem.one_shot_all_reduce_out")
        group_name = dist.group.WORLD.group_name
        symm_mem.enable_symm_mem_for_group(group_name)
        buffer = symm_mem.empty(MAX_BYTES, dtype=torch.uint8, device=device)
        symm_mem.rendezvous(buffer, group_name)
        made = cls(buffer, group_name)
        probe = torch.ones(8, dtype=torch.float32, device=device)
        made(probe)
        expect = float(dist.get_world_size())
        if not bool((probe == expect).all()):
            raise RuntimeError(f"probe all-reduce gave {probe.tolist()}, expected {expect}")
        return made

    def takes(self, x: torch.Tensor) -> bool:
        nbytes = x.numel() * x.element_size()  # the kernel moves whole 4-byte words
        return x.is_contiguous() and nbytes <= MAX_BYTES and nbytes % 4 == 0 and x.device == self.buffer.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of x over the ranks, written into x (contiguous, at most MAX_BYTES)."""
        staged = self.buffer[: x.numel() * x.element_size()].view(x.dtype).view(x.shape)
        staged.copy_(x)
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, x)
        return x
