"""Per-step attention metadata, set by the model runner around each forward.

Tokens of all scheduled sequences are flattened into one batch of T tokens:

    seq 0: [q q q q]   seq 1: [q]   seq 2: [q q]          (query tokens this step)
    query_start_loc = [0, 4, 5, 7]

Each sequence owns a block table; token i of a sequence lives in cache slot
block_table[i // block_size] * block_size + i % block_size. The new tokens'
K/V are written to `slot_mapping`, then attention reads positions
[0, seq_len) of each sequence through its block table.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64, cache slot of each new token
    query_start_loc: torch.Tensor  # [B+1] int32, cumulative query lengths (tokens)
    seq_lens: torch.Tensor  # [B] int32, context length of each sequence after this step (tokens)
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    token_seq_lens: torch.Tensor  # [T] int64, seq_lens of the sequence each token belongs to
    query_lens_host: list[int]  # host copy of the query lengths
    seq_lens_host: list[int]  # host copy of seq_lens
    max_query_len: int
    max_seq_len: int
    is_decode_only: bool  # every sequence has exactly one query token


_CONTEXT: AttentionMetadata | None = None


def get_forward_context() -> AttentionMetadata:
    if _CONTEXT is None:
        raise RuntimeError("attention called outside a forward context")
    return _CONTEXT


@contextmanager
def forward_context(meta: AttentionMetadata):
    global _CONTEXT
    prev, _CONTEXT = _CONTEXT, meta
    try:
        yield meta
    finally:
        _CONTEXT = prev
