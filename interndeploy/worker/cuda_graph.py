"""Decode steps captured as CUDA graphs, one per batch-size bucket.

A decode step of n sequences runs the graph of the smallest bucket >= n. Inputs
are copied into static buffers; the rows past n are padding that touch nothing:

    slot_mapping = -1   (store_kvcache skips the write)
    seq_lens     = 0    (decode attention reads no cache block)

The attention path used inside the graph reads only device tensors (no host
lists), and its grid depends only on the static shapes (block_tables columns).

Each graph ends with the LM head over all its rows (with tensor parallelism, the
gather of the vocabulary shards too): a decode step samples every row, so its
logits come out of the replay with no eager launch or collective after it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..distributed import tp_rank_and_size
from .forward_context import AttentionMetadata, forward_context

logger = logging.getLogger("interndeploy")

_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)


def token_input_buffers(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Static per-token inputs of a captured step, [n] each, all padding: input ids 0, positions 0, cache slots
    -1 (not stored), sequence lengths 1."""
    with torch.device(device):
        return (torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
                torch.full((n,), -1, dtype=torch.int64), torch.ones(n, dtype=torch.int64))


class DecodeCudaGraphs:
    def __init__(self, model: nn.Module, max_batch_size: int, max_blocks_per_seq: int, block_size: int,
                 device: torch.device) -> None:
        self.model = model
        self.device = device
        self.buckets = [b for b in _BUCKETS if b < max_batch_size] + [min(max_batch_size, _BUCKETS[-1])]
        self.buckets = sorted(set(self.buckets))
        self.max_bs = self.buckets[-1]
        self.max_blocks = max_blocks_per_seq
        self.block_size = block_size
        n = self.max_bs
        self.input_ids, self.positions, self.slot_mapping, self.token_seq_lens = token_input_buffers(n, device)
        with torch.device(device):
            self.seq_lens = torch.zeros(n, dtype=torch.int32)
            self.query_start_loc = torch.arange(n + 1, dtype=torch.int32)
            self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32)
        self.capture_mode = "thread_local" if tp_rank_and_size()[1] > 1 else "global"
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # hidden states [bs, H]
        self.logits: dict[int, torch.Tensor] = {}  # [bs, V] fp32

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs],
            token_seq_lens=self.token_seq_lens[:bs],
            query_lens_host=[1] * bs,
            seq_lens_host=[self.max_blocks * self.block_size] * bs,  # an upper bound; graph code must not use it
            max_query_len=1,
            max_seq_len=self.max_blocks * self.block_size,
            is_decode_only=True,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        # padding rows everywhere: the captured warm-up writes nothing to the cache
        self.slot_mapping.fill_(-1)
        self.seq_lens.zero_()
        for bs in reversed(self.buckets):  # largest first so smaller graphs reuse its memory pool
            meta = self._meta(bs)
            with forward_context(meta):
                # warm-up: lazy inits, autotuning
                self.model.compute_logits(self.model(self.input_ids[:bs], self.positions[:bs]))
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                # thread_local: NCCL's watchdog thread may query its events while a tp rank captures
                with torch.cuda.graph(graph, pool, capture_error_mode=self.capture_mode):
                    out = self.model(self.input_ids[:bs], self.positions[:bs])
                    logits = self.model.compute_logits(out)
            pool = graph.pool()
            self.graphs[bs] = graph
            self.outputs[bs] = out
            self.logits[bs] = logits
        torch.cuda.synchronize(self.device)
        logger.info("captured decode CUDA graphs for batch sizes %s", self.buckets)

    def can_run(self, meta: AttentionMetadata) -> bool:
        return meta.is_decode_only and len(meta.seq_lens_host) <= self.max_bs and (
            meta.block_tables.shape[1] <= self.max_blocks
        )

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay the smallest bucket that holds the step -> (hidden [n, H], logits [n, V] fp32), views of the
        graph's static outputs: valid until the next replay, in stream order."""
        n = input_ids.shape[0]
        bs = next(b for b in self.buckets if b >= n)
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(meta.seq_lens, non_blocking=True)
        self.token_seq_lens[:n].copy_(meta.token_seq_lens, non_blocking=True)
        self.block_tables[:n, :width].copy_(meta.block_tables, non_blocking=True)
        if bs > n:
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].zero_()
        self.graphs[bs].replay()
        return self.outputs[bs][:n], self.logits[bs][:n]
