"""Pure-torch kernels: the reference every Triton kernel is tested against, and the CPU path.

Paged KV cache layout (one tensor per layer for K, one for V):

    k_cache[num_blocks, block_size, num_kv_heads, head_dim]
    slot s  ->  block s // block_size, offset s % block_size

Token i of a sequence lives in slot block_table[i // block_size] * block_size + i % block_size.
With an int8 / int4 cache (quant_policy 8 / 4) the caches hold uint8 codes and `k_scale_zero` /
`v_scale_zero` [num_blocks, block_size, num_kv_heads, 2] their scale and zero point (reference_kv.py).
Each function here is pure apart from `store_kvcache`, which writes into the caches it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interndeploy.kernels.reference_kv import dequantize_kv, kv_cache_bits, quantize_kv
from interndeploy.worker.forward_context import AttentionMetadata


def store_kvcache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
) -> None:
    """Write k/v [T, Hkv, D] into the slots `slot_mapping` [T]; a slot of -1 (padding token) is skipped.

    A uint8 cache gets int8 / int4 codes (by its last dim) and the scale tensors their (scale, zero)."""
    block_size = k_cache.shape[1]
    bits = kv_cache_bits(k_cache, k.shape[-1])
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    blk, off = slots // block_size, slots % block_size
    if bits and (k_scale_zero is None or v_scale_zero is None):
        raise ValueError("a quantized (uint8) KV cache needs k_scale_zero / v_scale_zero")
    for x, cache, scale_zero in ((k, k_cache, k_scale_zero), (v, v_cache, v_scale_zero)):
        if bits:
            cache[blk, off], scale_zero[blk, off] = quantize_kv(x[valid], bits, scale_zero.dtype)
        else:
            cache[blk, off] = x[valid].to(cache.dtype)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of one sequence: q [Lq, Hq, D] are the last Lq of the S positions of k/v [S, Hkv, D]."""
    lq, s = q.shape[0], k.shape[0]
    qh, kh, vh = (t.transpose(0, 1).float() for t in (q, k, v))
    if lq == s:
        mask, causal = None, True
    elif lq == 1:
        mask, causal = None, False
    else:
        # query j sits at position s - lq + j and sees keys 0 ..= s - lq + j
        q_pos = torch.arange(s - lq, s, device=q.device)
        mask = torch.arange(s, device=q.device)[None, :] <= q_pos[:, None]
        causal = False
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=qh.shape[0] != kh.shape[0]
    )
    return out.transpose(0, 1).to(q.dtype)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of the T query tokens [T, Hq, D] over each sequence's first seq_len cached tokens -> [T, Hq, D].

    Query token j of a sequence with query_len Lq and seq_len S sits at position S - Lq + j (the new tokens
    are the last ones of the context). Hq must be a multiple of Hkv; q head h reads kv head h // (Hq // Hkv).
    A quantized cache is dequantized to fp32 first.
    """
    block_size = k_cache.shape[1]
    bits = kv_cache_bits(k_cache, q.shape[-1])
    if bits and (k_scale_zero is None or v_scale_zero is None):
        raise ValueError("a quantized (uint8) KV cache needs k_scale_zero / v_scale_zero")
    out = torch.empty_like(q)
    start = 0
    for b, (lq, s) in enumerate(zip(meta.query_lens_host, meta.seq_lens_host, strict=True)):
        if lq == 0:
            continue
        num_blocks = -(-s // block_size)
        blocks = meta.block_tables[b, :num_blocks].long()
        k = k_cache[blocks].flatten(0, 1)[:s]
        v = v_cache[blocks].flatten(0, 1)[:s]
        if bits:
            k = dequantize_kv(k, k_scale_zero[blocks].flatten(0, 1)[:s], bits)
            v = dequantize_kv(v, v_scale_zero[blocks].flatten(0, 1)[:s], bits)
        out[start : start + lq] = _attend(q[start : start + lq], k, v, scale)
        start += lq
    return out


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_lens: list[int],
    scale: float,
) -> torch.Tensor:
    """Causal attention within each sequence's own tokens, no cache: q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D]."""
    out = torch.empty_like(q)
    start = 0
    for lq in query_lens:
        end = start + lq
        if lq:
            out[start:end] = _attend(q[start:end], k[start:end], v[start:end], scale)
        start = end
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight over the last dim, normalised in fp32 then cast back before the weight (as HF Llama)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the pre-norm of the next sub-layer and its residual stream."""
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] = [gate | up] -> silu(gate) * up [..., I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE (HF Llama / InternLM2): q [T, Hq, D], k [T, Hkv, D], cos/sin [T, D/2] -> rotated q, k.

    With x = [x1 | x2] split in halves: out = [x1 cos - x2 sin | x2 cos + x1 sin], computed in fp32.
    """

    def rotate(x: torch.Tensor) -> torch.Tensor:
        c, s = cos[:, None, :].float(), sin[:, None, :].float()
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)
