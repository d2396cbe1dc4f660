"""Attention over the paged KV cache of one layer.

The model runner attaches `k_cache` / `v_cache` [num_blocks, block_size, num_kv_heads, head_dim] after
measuring free memory; with quant_policy 8 / 4 they hold uint8 codes ([.., head_dim / 2] for int4) and
`k_scale_zero` / `v_scale_zero` [num_blocks, block_size, num_kv_heads, 2] their scales and zero points
(quant/kv.py): K/V are quantized as they are stored and dequantized inside attention. Before that
(profile / warm-up run) they are empty and attention is plain causal attention within each sequence's
query tokens, which equals the cached result for a fresh prefill.

CUDA tensors go through the Triton kernels (store, then decode or prefill/extend attention), anything
else through the torch reference. The CUDA decode path reads no device value on the host, so a decode
step can be captured in a CUDA graph; in other steps, the layers around attention are captured in pieces
(worker/piecewise_graph.py) and `attend` runs between them.
"""

from __future__ import annotations

import torch
from torch import nn

from interndeploy.kernels import reference
from interndeploy.kernels._triton import use_triton
from interndeploy.kernels.decode_attention import decode_attention
from interndeploy.kernels.prefill_attention import prefill_attention as paged_prefill_attention
from interndeploy.kernels.store_kvcache import store_kvcache
from interndeploy.worker.forward_context import AttentionMetadata, get_forward_context
from interndeploy.worker.piecewise_graph import capture_session


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
        self.k_scale_zero = torch.tensor([])  # empty unless the cache is int8 / int4
        self.v_scale_zero = torch.tensor([])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, Hq * D], k/v [T, Hkv * D] (already rotated) -> [T, Hq * D]."""
        meta = get_forward_context()
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = self.k_cache, self.v_cache
        k_sz, v_sz = self._scale_zeros()
        if k_cache.numel() == 0:
            out = reference.prefill_attention(q, k, v, meta.query_lens_host, self.scale)
        elif use_triton(q):
            store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping, k_sz, v_sz)
            session = capture_session()
            if session is not None:  # a piecewise graph ends here; attention runs between the replays
                out = session.split(self, q)
            else:
                out = self.attend(q, meta)
        else:
            reference.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping, k_sz, v_sz)
            out = reference.paged_attention(q, k_cache, v_cache, meta, self.scale, k_sz, v_sz)
        return out.reshape(-1, self.num_heads * self.head_dim)

    def _scale_zeros(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (self.k_scale_zero, self.v_scale_zero) if self.k_scale_zero.numel() else (None, None)

    def attend(self, q: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor | None = None) -> torch.Tensor:
        """Triton attention of q [T, Hq, D] over the cache (this step's K/V already stored) -> [T, Hq, D], into
        `out` when given."""
        k_sz, v_sz = self._scale_zeros()
        if meta.is_decode_only and q.shape[0] == meta.seq_lens.shape[0]:
            return decode_attention(
                q, self.k_cache, self.v_cache, meta.block_tables, meta.seq_lens, self.scale,
                k_scale_zero=k_sz, v_scale_zero=v_sz, out=out,
            )  # fmt: skip
        return paged_prefill_attention(
            q, self.k_cache, self.v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
            meta.max_query_len, self.scale, k_scale_zero=k_sz, v_scale_zero=v_sz, out=out,
        )  # fmt: skip
