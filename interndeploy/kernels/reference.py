"""Pure-torch kernels: the reference every Triton kernel is tested against, and the CPU path.

Paged KV cache layout (one tensor per layer for K, one for V):

    k_cache[num_blocks, block_size, num_kv_heads, head_dim]
    slot s  ->  block s // block_size, offset s % block_size

Token i of a sequence lives in slot block_table[i // block_size] * block_size + i % block_size.
Each function here is pure apart from `store_kvcache`, which writes into the caches it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interndeploy.worker.forward_context import AttentionMetadata


def store_kvcache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write k/v [T, Hkv, D] into the slots `slot_mapping` [T]; a slot of -1 (padding token) is skipped."""
    num_kv_heads, head_dim = k_cache.shape[-2:]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k_cache.view(-1, num_kv_heads, head_dim)[slots] = k[valid].to(k_cache.dtype)
    v_cache.view(-1, num_kv_heads, head_dim)[slots] = v[valid].to(v_cache.dtype)


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
) -> torch.Tensor:
    """Attention of the T query tokens [T, Hq, D] over each sequence's first seq_len cached tokens -> [T, Hq, D].

    Query token j of a sequence with query_len Lq and seq_len S sits at position S - Lq + j (the new tokens
    are the last ones of the context). Hq must be a multiple of Hkv; q head h reads kv head h // (Hq // Hkv).
    """
    block_size = k_cache.shape[1]
    out = torch.empty_like(q)
    start = 0
    for b, (lq, s) in enumerate(zip(meta.query_lens_host, meta.seq_lens_host, strict=True)):
        if lq == 0:
            continue
        num_blocks = -(-s // block_size)
        blocks = meta.block_tables[b, :num_blocks].long()
        k = k_cache[blocks].flatten(0, 1)[:s]
        v = v_cache[blocks].flatten(0, 1)[:s]
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
