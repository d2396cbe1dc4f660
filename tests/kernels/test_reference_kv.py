"""The int8 / int4 KV quantization twins (kernels/reference_kv.py) and the reference store / paged attention
on quantized caches: round-trip error bounds, the int4 packing, padding slots, and attention equal to
attention over the dequantized values."""

from __future__ import annotations

import math

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.reference_kv import QMAX, SCALE_EPS, dequantize_kv, kv_cache_bits, quantize_kv
from interndeploy.quant.kv import KVCacheLayout
from interndeploy.testing.attention import assign_block_tables, make_metadata


def _rows(t: int, h: int, d: int, seed: int = 0) -> torch.Tensor:
    """K/V-like rows [t, h, d]: magnitudes from 1e-2 to 1e2, offsets, and a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, d, generator=g) * 10 ** (torch.rand(t, h, 1, generator=g) * 4 - 2)
    x += torch.randn(t, h, 1, generator=g) * 3
    x[:, :, 3] *= 20  # an outlier channel, as real K caches have
    return x


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_round_trip_error_is_half_a_step(bits: int, scale_dtype: torch.dtype) -> None:
    """|x - dequant(quant(x))| <= (max - min) / qmax / 2 per token-head: 1/510 (int8), 1/30 (int4) of the row's
    range, plus the rounding of the zero point to the scale dtype."""
    x = _rows(64, 4, 128)
    codes, scale_zero = quantize_kv(x, bits, scale_dtype)
    assert codes.dtype == torch.uint8 and codes.shape == (64, 4, 128 if bits == 8 else 64)
    assert scale_zero.dtype == scale_dtype and scale_zero.shape == (64, 4, 2)
    y = dequantize_kv(codes, scale_zero, bits)
    span = x.amax(-1) - x.amin(-1)
    zero_err = (scale_zero[..., 1].float() - x.amin(-1)).abs()
    err = (y - x).abs().amax(-1)
    slack = 2**-10 if scale_dtype == torch.float16 else 1e-6  # the scale's own rounding
    assert (err <= span / QMAX[bits] / 2 * (1 + slack) + zero_err + 1e-6 * x.abs().amax(-1)).all()
    ratio = float((err / span).max())
    assert ratio < (1 / 500 if bits == 8 else 1 / 29), ratio


def test_int4_packs_the_two_halves_of_the_head_dim() -> None:
    x = torch.arange(16.0).view(1, 1, 16)  # min 0, max 15: codes are the values themselves
    codes, scale_zero = quantize_kv(x, 4, torch.float32)
    assert scale_zero.tolist() == [[[1.0, 0.0]]]
    assert codes.view(-1).tolist() == [j | (j + 8) << 4 for j in range(8)]
    assert torch.equal(dequantize_kv(codes, scale_zero, 4), x)


def test_constant_row_is_exact() -> None:
    x = torch.full((2, 3, 8), -2.5)
    for bits in (8, 4):
        codes, scale_zero = quantize_kv(x, bits, torch.float16)
        assert (codes == 0).all() and (scale_zero[..., 0].float() == torch.tensor(SCALE_EPS).half().float()).all()
        assert torch.equal(dequantize_kv(codes, scale_zero, bits), x)


def test_cache_bits_from_dtype_and_last_dim() -> None:
    assert kv_cache_bits(torch.zeros(1, 1, 1, 64), 64) == 0
    assert kv_cache_bits(torch.zeros(1, 1, 1, 64, dtype=torch.uint8), 64) == 8
    assert kv_cache_bits(torch.zeros(1, 1, 1, 32, dtype=torch.uint8), 64) == 4
    with pytest.raises(ValueError, match="last dim"):
        kv_cache_bits(torch.zeros(1, 1, 1, 48, dtype=torch.uint8), 64)


@pytest.mark.parametrize("quant_policy", [8, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_on_quantized_cache(quant_policy: int, dtype: torch.dtype) -> None:
    """Store through slots (padding skipped), then attend: equal to attention over the dequantized K/V, and
    close to attention over the unquantized cache."""
    torch.manual_seed(0)
    hq, hkv, d, block_size = 8, 2, 32, 4
    seq_lens, query_lens = [9, 21, 5, 1, 17], [9, 6, 1, 1, 17]
    tables, num_blocks = assign_block_tables(seq_lens, block_size)
    full = make_metadata(seq_lens, seq_lens, tables, block_size)
    n = sum(seq_lens)
    k, v = (torch.randn(n, hkv, d) + torch.randn(n, hkv, 1)).to(dtype), torch.randn(n, hkv, d, dtype=dtype)
    slots = torch.cat([full.slot_mapping, torch.tensor([-1, -1])])  # two padding tokens write nothing
    k_pad, v_pad = torch.cat([k, k[:2] + 100]), torch.cat([v, v[:2] + 100])

    layout = KVCacheLayout(quant_policy, d, dtype)
    k_cache, v_cache, k_sz, v_sz = layout.allocate(num_blocks + 1, block_size, hkv, "cpu", zero=True)
    reference.store_kvcache(k_pad, v_pad, k_cache, v_cache, slots, k_sz, v_sz)
    assert k_cache.shape[-1] == layout.cache_dim and k_sz.shape == (num_blocks + 1, block_size, hkv, 2)
    assert int((k_sz[..., 0] != 0).sum()) == n * hkv  # exactly the valid slots got a scale

    fp_cache = [torch.zeros(num_blocks + 1, block_size, hkv, d, dtype=dtype) for _ in range(2)]
    reference.store_kvcache(k, v, *fp_cache, full.slot_mapping)
    bits = 8 if quant_policy == 8 else 4
    deq_k = torch.zeros(num_blocks + 1, block_size, hkv, d)
    deq_v = torch.zeros_like(deq_k)
    deq_k[:] = dequantize_kv(k_cache, k_sz, bits)
    deq_v[:] = dequantize_kv(v_cache, v_sz, bits)

    meta = make_metadata(query_lens, seq_lens, tables, block_size)
    q = torch.randn(sum(query_lens), hq, d, dtype=dtype)
    scale = 1 / math.sqrt(d)
    out = reference.paged_attention(q, k_cache, v_cache, meta, scale, k_sz, v_sz)
    assert out.dtype == dtype
    torch.testing.assert_close(out, reference.paged_attention(q.float(), deq_k, deq_v, meta, scale).to(dtype),
                               atol=1e-5, rtol=0)
    exact = reference.paged_attention(q, *fp_cache, meta, scale).float()
    rel = float((out.float() - exact).norm() / exact.norm())
    assert rel < (1.5e-2 if quant_policy == 8 else 0.15), rel  # measured 5.3e-3 / 9.2e-2


def test_quantized_cache_without_scales_is_an_error() -> None:
    cache = torch.zeros(2, 4, 1, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs k_scale_zero"):
        reference.store_kvcache(torch.zeros(1, 1, 8), torch.zeros(1, 1, 8), cache, cache, torch.tensor([0]))
