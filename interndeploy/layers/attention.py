"""Attention over the paged KV cache of one layer.

The model runner attaches `k_cache` / `v_cache` [num_blocks, block_size, num_kv_heads, head_dim] after
measuring free memory. Before that (profile / warm-up run) they are empty and attention is plain causal
attention within each sequence's query tokens, which equals the cached result for a fresh prefill.
"""

from __future__ import annotations

import torch
from torch import nn

from interndeploy.kernels.reference import paged_attention, prefill_attention, store_kvcache
from interndeploy.worker.forward_context import get_forward_context


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        # plain attributes, not buffers: the cache is owned by the model runner and never checkpointed
        self.k_cache = torch.tensor([])
        self.v_cache = torch.tensor([])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, Hq * D], k/v [T, Hkv * D] (already rotated) -> [T, Hq * D]."""
        meta = get_forward_context()
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.k_cache.numel() == 0:
            out = prefill_attention(q, k, v, meta.query_lens_host, self.scale)
        else:
            store_kvcache(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
            out = paged_attention(q, self.k_cache, self.v_cache, meta, self.scale)
        return out.reshape(-1, self.num_heads * self.head_dim)
