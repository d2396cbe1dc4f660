"""The torch reference kernels against naive, obviously-correct formulations (and HF's where it has one)."""

from __future__ import annotations

import math

import pytest
import torch

from interndeploy.kernels.reference import (
    apply_rotary,
    fused_add_rms_norm,
    paged_attention,
    prefill_attention,
    rms_norm,
    silu_and_mul,
    store_kvcache,
)
from interndeploy.testing.attention import assign_block_tables, make_metadata


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [Lq, Hq, D] at the last Lq of S positions of k/v [S, Hkv, D]; loops, explicit softmax, fp64."""
    lq, hq, _ = q.shape
    s, hkv, _ = k.shape
    out = torch.empty(q.shape, dtype=torch.float64)
    for h in range(hq):
        kh, vh = k[:, h // (hq // hkv)].double(), v[:, h // (hq // hkv)].double()
        for j in range(lq):
            visible = s - lq + j + 1
            scores = (kh[:visible] @ q[j, h].double()) * scale
            out[j, h] = torch.softmax(scores, 0) @ vh[:visible]
    return out


def _fill_cache(ks, vs, block_size, hkv, d, dtype, seed=0):
    """A paged cache holding each sequence's full K/V (ks[b], vs[b] [S_b, Hkv, D]) plus its block tables."""
    tables, num_blocks = assign_block_tables([k.shape[0] for k in ks], block_size, seed=seed)
    k_cache = torch.full((num_blocks + 2, block_size, hkv, d), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    meta = make_metadata([k.shape[0] for k in ks], [k.shape[0] for k in ks], tables, block_size)
    store_kvcache(torch.cat(ks), torch.cat(vs), k_cache, v_cache, meta.slot_mapping)
    return k_cache, v_cache, tables


@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_mixed_batch(hq: int, hkv: int, block_size: int, dtype: torch.dtype) -> None:
    """Prefill, chunked prefill (query after a cached prefix) and decode sequences in one batch."""
    torch.manual_seed(0)
    d = 16
    seq_lens, query_lens = [9, 21, 5, 1, 17], [9, 6, 1, 1, 17]
    ks = [torch.randn(s, hkv, d, dtype=dtype) for s in seq_lens]
    vs = [torch.randn(s, hkv, d, dtype=dtype) for s in seq_lens]
    k_cache, v_cache, tables = _fill_cache(ks, vs, block_size, hkv, d, dtype)
    q = torch.randn(sum(query_lens), hq, d, dtype=dtype)
    meta = make_metadata(query_lens, seq_lens, tables, block_size)
    scale = 1 / math.sqrt(d)
    out = paged_attention(q, k_cache, v_cache, meta, scale)
    assert out.shape == q.shape and out.dtype == dtype
    expected = torch.cat(
        [_naive_attention(qb, k, v, scale) for qb, k, v in zip(q.split(query_lens), ks, vs, strict=True)]
    )
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=0)


def test_prefill_attention_equals_paged_prefill() -> None:
    torch.manual_seed(1)
    lens, hq, hkv, d = [3, 11, 1, 7], 6, 2, 8
    q, k, v = torch.randn(sum(lens), hq, d), torch.randn(sum(lens), hkv, d), torch.randn(sum(lens), hkv, d)
    k_cache, v_cache, tables = _fill_cache(list(k.split(lens)), list(v.split(lens)), 4, hkv, d, torch.float32)
    meta = make_metadata(lens, lens, tables, 4)
    torch.testing.assert_close(
        prefill_attention(q, k, v, lens, 0.3), paged_attention(q, k_cache, v_cache, meta, 0.3), atol=1e-6, rtol=0
    )


def test_store_kvcache_writes_slots_and_skips_padding() -> None:
    k_cache = torch.zeros(3, 2, 1, 4)
    v_cache = torch.zeros(3, 2, 1, 4)
    k = torch.arange(3.0)[:, None, None].expand(3, 1, 4) + 1
    store_kvcache(k, -k, k_cache, v_cache, torch.tensor([5, -1, 0]))
    assert k_cache[2, 1, 0, 0] == 1 and k_cache[0, 0, 0, 0] == 3 and v_cache[2, 1, 0, 0] == -1
    assert int((k_cache != 0).sum()) == 8  # two slots of four values; the padding token wrote nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_hf(dtype: torch.dtype) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(2)
    x = torch.randn(5, 32, dtype=dtype) * 3
    hf = LlamaRMSNorm(32, eps=1e-5).to(dtype)
    hf.weight.data = torch.randn(32, dtype=dtype)
    torch.testing.assert_close(rms_norm(x, hf.weight, 1e-5), hf(x), atol=0, rtol=0)


def test_fused_add_rms_norm() -> None:
    torch.manual_seed(3)
    x, residual, w = torch.randn(4, 16), torch.randn(4, 16), torch.randn(16)
    out, new_residual = fused_add_rms_norm(x, residual, w, 1e-6)
    torch.testing.assert_close(new_residual, x + residual)
    expected = (x + residual) / torch.sqrt(((x + residual) ** 2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(out, expected)


def test_silu_and_mul() -> None:
    x = torch.randn(3, 10)
    torch.testing.assert_close(silu_and_mul(x), x[:, :5] * torch.sigmoid(x[:, :5]) * x[:, 5:])


def test_apply_rotary_matches_hf() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(4)
    t, hq, hkv, d = 7, 4, 2, 16
    q, k = torch.randn(t, hq, d), torch.randn(t, hkv, d)
    angles = torch.randn(t, d // 2) * 5
    cos, sin = angles.cos(), angles.sin()
    out_q, out_k = apply_rotary(q, k, cos, sin)
    full_cos, full_sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    # HF wants [B, H, T, D] with cos/sin [B, T, D]
    ref_q, ref_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], full_cos[None], full_sin[None]
    )
    torch.testing.assert_close(out_q, ref_q[0].transpose(0, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out_k, ref_k[0].transpose(0, 1), atol=1e-6, rtol=0)
    assert out_q.shape == q.shape and out_k.shape == k.shape
