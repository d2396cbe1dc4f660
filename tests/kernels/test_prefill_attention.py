"""Paged causal prefill / extend attention (Triton) against reference.paged_attention, on fp and int8 / int4
caches."""

from __future__ import annotations

import math

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.prefill_attention import prefill_attention
from interndeploy.quant.kv import KVCacheLayout
from interndeploy.testing.attention import assign_block_tables, make_metadata

pytestmark = pytest.mark.gpu

# (query_len, seq_len): whole prompts, chunked prefill / prefix-cache hits (query after a cached prefix),
# decode rows (1 of S), a sequence with no tokens this step, lengths off the block size
MIXED = [(9, 9), (6, 21), (1, 5), (1, 1), (17, 17), (0, 8), (70, 131)]
LONG = [(300, 4200), (1000, 1000), (1, 4097), (130, 4500)]


def _run(assert_close, device, steps, d, block_size, hq, hkv, dtype, seed=0, quant_policy=0):
    torch.manual_seed(seed)
    query_lens, seq_lens = [q for q, _ in steps], [s for _, s in steps]
    tables, num_blocks = assign_block_tables(seq_lens, block_size, seed=seed)
    # unwritten slots: NaN values, or code 0xFF with NaN scales
    layout = KVCacheLayout(quant_policy, d, dtype)
    k_cache, v_cache, k_sz, v_sz = layout.allocate(num_blocks + 2, block_size, hkv, device)
    for t in (k_cache, v_cache, k_sz, v_sz):
        t.fill_(0xFF if t.dtype == torch.uint8 else float("nan"))
    k_sz, v_sz = (k_sz, v_sz) if quant_policy else (None, None)
    full = make_metadata(seq_lens, seq_lens, tables, block_size, device)  # write every token's K/V
    n = sum(seq_lens)
    k, v = (torch.randn(n, hkv, d, dtype=dtype, device=device) for _ in range(2))
    reference.store_kvcache(k, v, k_cache, v_cache, full.slot_mapping, k_sz, v_sz)
    meta = make_metadata(query_lens, seq_lens, tables, block_size, device)
    q = torch.randn(sum(query_lens), hq, d, dtype=dtype, device=device)
    scale = 1 / math.sqrt(d)
    out = torch.full_like(q, float("nan"))
    prefill_attention(
        q, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, meta.max_query_len, scale,
        k_scale_zero=k_sz, v_scale_zero=v_sz, out=out,
    )
    assert_close(out, reference.paged_attention(q, k_cache, v_cache, meta, scale, k_sz, v_sz))


@pytest.mark.parametrize(("d", "block_size"), [(128, 16), (64, 64), (128, 64)])
@pytest.mark.parametrize(("hq", "hkv"), [(8, 8), (32, 8), (16, 2)], ids=["mha", "gqa4", "gqa8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_batch(device, assert_attention_close, d, block_size, hq, hkv, dtype) -> None:
    _run(assert_attention_close, device, MIXED, d, block_size, hq, hkv, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("hq", "hkv", "d"), [(32, 8, 128), (8, 1, 64)])
def test_long_context(device, assert_attention_close, dtype, hq, hkv, d) -> None:
    _run(assert_attention_close, device, LONG, d, 16, hq, hkv, dtype, seed=1)


def test_fp32_and_odd_head_dim(device, assert_attention_close) -> None:
    _run(assert_attention_close, device, MIXED, 80, 16, 4, 2, torch.float32, seed=2)
    _run(assert_attention_close, device, MIXED, 16, 4, 4, 2, torch.float32, seed=3)  # the tiny test models' geometry


@pytest.mark.parametrize("quant_policy", [8, 4])
@pytest.mark.parametrize(("d", "block_size"), [(128, 16), (64, 64)])
@pytest.mark.parametrize(("hq", "hkv"), [(8, 8), (32, 8)], ids=["mha", "gqa4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantized_mixed_batch(device, assert_attention_close, quant_policy, d, block_size, hq, hkv, dtype) -> None:
    _run(assert_attention_close, device, MIXED, d, block_size, hq, hkv, dtype, quant_policy=quant_policy)


@pytest.mark.parametrize("quant_policy", [8, 4])
def test_quantized_long_context_and_odd_head_dim(device, assert_attention_close, quant_policy) -> None:
    _run(assert_attention_close, device, LONG, 128, 16, 32, 8, torch.float16, seed=1, quant_policy=quant_policy)
    _run(assert_attention_close, device, MIXED, 80, 16, 4, 2, torch.float16, seed=2, quant_policy=quant_policy)
    _run(assert_attention_close, device, MIXED, 16, 4, 4, 2, torch.float32, seed=3, quant_policy=quant_policy)
