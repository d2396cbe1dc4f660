"""Build attention metadata and paged KV caches by hand, as the model runner would, for tests.

A `PagedBatch` plays scheduler + block manager for a fixed set of sequences: it hands out blocks
(deliberately not in order, so paging bugs show), and for each step builds the `AttentionMetadata`
and positions of the tokens scheduled in it.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from interndeploy.layers.attention import Attention
from interndeploy.quant.kv import KVCacheLayout
from interndeploy.worker.forward_context import AttentionMetadata


def make_metadata(
    query_lens: list[int],
    seq_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for a step in which sequence b computes its last query_lens[b] of seq_lens[b] tokens."""
    slots: list[int] = []
    token_seq_lens: list[int] = []
    for lq, s, table in zip(query_lens, seq_lens, block_tables, strict=True):
        if len(table) * block_size < s:
            raise ValueError(f"block table of {len(table)} blocks cannot hold {s} tokens")
        slots += [table[i // block_size] * block_size + i % block_size for i in range(s - lq, s)]
        token_seq_lens += [s] * lq
    max_blocks = max((len(t) for t in block_tables), default=0)
    padded = [t + [0] * (max_blocks - len(t)) for t in block_tables]
    starts = [0]
    for lq in query_lens:
        starts.append(starts[-1] + lq)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device).reshape(len(block_tables), max_blocks),
        token_seq_lens=torch.tensor(token_seq_lens, dtype=torch.int64, device=device),
        query_lens_host=list(query_lens),
        seq_lens_host=list(seq_lens),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        is_decode_only=bool(query_lens) and all(q == 1 for q in query_lens),
    )


def assign_block_tables(max_lens: list[int], block_size: int, *, seed: int = 0) -> tuple[list[list[int]], int]:
    """Shuffled, disjoint block tables able to hold max_lens[b] tokens each; also the number of blocks used."""
    needed = [-(-n // block_size) for n in max_lens]
    blocks = list(range(sum(needed)))
    random.Random(seed).shuffle(blocks)
    tables, start = [], 0
    for n in needed:
        tables.append(blocks[start : start + n])
        start += n
    return tables, len(blocks)


def make_prefill_metadata(
    seq_lens: list[int],
    block_size: int,
    block_tables: list[list[int]] | None = None,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for a prefill of whole prompts (query_len == seq_len)."""
    if block_tables is None:
        block_tables, _ = assign_block_tables(seq_lens, block_size)
    return make_metadata(list(seq_lens), list(seq_lens), block_tables, block_size, device)


def make_decode_metadata(
    seq_lens: list[int],
    block_size: int,
    block_tables: list[list[int]],
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for one new token per sequence; seq_lens count that token."""
    return make_metadata([1] * len(seq_lens), list(seq_lens), block_tables, block_size, device)


def positions_for(query_lens: list[int], seq_lens: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Flattened positions [T] of the query tokens: the last query_lens[b] of seq_lens[b]."""
    pos = [p for lq, s in zip(query_lens, seq_lens, strict=True) for p in range(s - lq, s)]
    return torch.tensor(pos, dtype=torch.int64, device=device)


def attention_layers(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def attach_kv_caches(
    model: nn.Module,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype | None = None,
    device=None,
    quant_policy: int = 0,
) -> None:
    """Give every Attention layer a zeroed k/v cache [num_blocks, block_size, Hkv, D] (int8 / int4 codes and
    their scale/zero tensors with quant_policy 8 / 4)."""
    for layer in attention_layers(model):
        layout = KVCacheLayout(quant_policy, layer.head_dim, dtype or torch.get_default_dtype())
        layer.k_cache, layer.v_cache, layer.k_scale_zero, layer.v_scale_zero = layout.allocate(
            num_blocks, block_size, layer.num_kv_heads, device or "cpu", zero=True
        )


def detach_kv_caches(model: nn.Module) -> None:
    for layer in attention_layers(model):
        layer.k_cache = layer.v_cache = layer.k_scale_zero = layer.v_scale_zero = torch.tensor([])


class PagedBatch:
    """Sequences sharing one paged cache; `step(query_lens)` advances each by its query_len tokens."""

    def __init__(self, max_lens: list[int], block_size: int, *, seed: int = 0, device="cpu") -> None:
        self.block_size = block_size
        self.device = device
        self.block_tables, self.num_blocks = assign_block_tables(max_lens, block_size, seed=seed)
        self.seq_lens = [0] * len(max_lens)

    def step(self, query_lens: list[int]) -> tuple[AttentionMetadata, torch.Tensor]:
        """(metadata, positions [T]) for computing query_lens[b] more tokens of each sequence."""
        self.seq_lens = [s + q for s, q in zip(self.seq_lens, query_lens, strict=True)]
        meta = make_metadata(list(query_lens), self.seq_lens, self.block_tables, self.block_size, self.device)
        return meta, positions_for(list(query_lens), self.seq_lens, self.device)
