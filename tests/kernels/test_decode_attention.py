"""Paged split-K decode attention (Triton) against reference.paged_attention, on fp and int8 / int4 caches."""

from __future__ import annotations

import math

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.decode_attention import decode_attention
from interndeploy.quant.kv import KVCacheLayout
from interndeploy.testing.attention import assign_block_tables, make_decode_metadata, make_prefill_metadata

pytestmark = pytest.mark.gpu

SHORT = [1, 17, 100, 64, 3]  # 1, non-multiples of the block size, one exact multiple
LONG = [4100, 1, 5000, 777]  # split-K territory, beside short sequences


def _paged_cache(seq_lens, block_size, hkv, d, dtype, device, seed=0):
    """A NaN-poisoned paged cache with random K/V in each sequence's slots, and its decode metadata."""
    tables, num_blocks = assign_block_tables(seq_lens, block_size, seed=seed)
    k_cache = torch.full((num_blocks + 3, block_size, hkv, d), float("nan"), dtype=dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    meta = make_decode_metadata(seq_lens, block_size, tables, device)
    slots = make_prefill_metadata(seq_lens, block_size, tables, device).slot_mapping  # every token's slot
    n = len(slots)
    reference.store_kvcache(
        torch.randn(n, hkv, d, dtype=dtype, device=device),
        torch.randn(n, hkv, d, dtype=dtype, device=device),
        k_cache,
        v_cache,
        slots,
    )
    return k_cache, v_cache, meta


def _quant_paged_cache(seq_lens, block_size, hkv, d, dtype, device, quant_policy, seed=0):
    """Like _paged_cache with int8 / int4 codes: unwritten slots hold code 0xFF and NaN scales."""
    tables, num_blocks = assign_block_tables(seq_lens, block_size, seed=seed)
    caches = KVCacheLayout(quant_policy, d, dtype).allocate(num_blocks + 3, block_size, hkv, device)
    caches[0].fill_(0xFF)
    caches[1].fill_(0xFF)
    caches[2].fill_(float("nan"))
    caches[3].fill_(float("nan"))
    meta = make_decode_metadata(seq_lens, block_size, tables, device)
    slots = make_prefill_metadata(seq_lens, block_size, tables, device).slot_mapping
    n = len(slots)
    k = torch.randn(n, hkv, d, device=device) + torch.randn(n, hkv, 1, device=device)  # per-token offsets
    v = torch.randn(n, hkv, d, device=device)
    k_cache, v_cache, k_sz, v_sz = caches
    reference.store_kvcache(k.to(dtype), v.to(dtype), k_cache, v_cache, slots, k_sz, v_sz)
    return caches, meta


@pytest.mark.parametrize("seq_lens", [SHORT, LONG], ids=["short", "long"])
@pytest.mark.parametrize(("d", "block_size"), [(128, 16), (64, 64), (128, 64)])
@pytest.mark.parametrize(("hq", "hkv"), [(8, 8), (32, 8), (32, 4)], ids=["mha", "gqa4", "gqa8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference(device, assert_attention_close, seq_lens, d, block_size, hq, hkv, dtype) -> None:
    torch.manual_seed(1)
    k_cache, v_cache, meta = _paged_cache(seq_lens, block_size, hkv, d, dtype, device)
    q = torch.randn(len(seq_lens), hq, d, dtype=dtype, device=device)
    scale = 1 / math.sqrt(d)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, out=out)
    assert_attention_close(out, reference.paged_attention(q, k_cache, v_cache, meta, scale))


@pytest.mark.parametrize("num_splits", [1, 3, 8, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_any_split_count(device, assert_attention_close, num_splits: int, dtype: torch.dtype) -> None:
    """Split counts above a sequence's blocks leave splits empty; the reduce must ignore them."""
    torch.manual_seed(2)
    k_cache, v_cache, meta = _paged_cache([300, 1, 65, 2049], 16, 2, 96, dtype, device)  # head_dim not 2^k
    q = torch.randn(4, 8, 96, dtype=dtype, device=device)
    out = decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, 0.1, num_splits=num_splits)
    assert_attention_close(out, reference.paged_attention(q, k_cache, v_cache, meta, 0.1))


def test_empty_sequence_gives_zeros(device, assert_attention_close) -> None:
    """A CUDA-graph padding row (seq_len 0) must not produce NaN."""
    k_cache, v_cache, meta = _paged_cache([40, 1], 16, 2, 64, torch.float16, device)
    seq_lens = meta.seq_lens.clone()
    seq_lens[1] = 0
    q = torch.randn(2, 4, 64, dtype=torch.float16, device=device)
    for splits in (1, 4):
        out = decode_attention(q, k_cache, v_cache, meta.block_tables, seq_lens, 0.125, num_splits=splits)
        assert (out[1] == 0).all()
        assert_attention_close(out[:1], reference.paged_attention(q, k_cache, v_cache, meta, 0.125)[:1])


@pytest.mark.parametrize("quant_policy", [8, 4])
@pytest.mark.parametrize("seq_lens", [SHORT, LONG], ids=["short", "long"])
@pytest.mark.parametrize(("hq", "hkv", "d", "block_size"), [(8, 8, 128, 16), (32, 8, 128, 64), (16, 2, 64, 16)],
                         ids=["mha", "gqa4", "gqa8-d64"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantized_cache_matches_reference(
    device, assert_attention_close, quant_policy, seq_lens, hq, hkv, d, block_size, dtype
) -> None:
    """int8 / int4 tiles dequantized in the kernel equal the reference's dequantize-then-attend."""
    torch.manual_seed(3)
    (k_cache, v_cache, k_sz, v_sz), meta = _quant_paged_cache(seq_lens, block_size, hkv, d, dtype, device, quant_policy)
    q = torch.randn(len(seq_lens), hq, d, dtype=dtype, device=device)
    scale = 1 / math.sqrt(d)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, k_scale_zero=k_sz,
                     v_scale_zero=v_sz, out=out)
    assert_attention_close(out, reference.paged_attention(q, k_cache, v_cache, meta, scale, k_sz, v_sz))


@pytest.mark.parametrize("quant_policy", [8, 4])
@pytest.mark.parametrize("num_splits", [1, 5])
def test_quantized_odd_head_dim_and_splits(device, assert_attention_close, quant_policy, num_splits) -> None:
    torch.manual_seed(4)
    (k_cache, v_cache, k_sz, v_sz), meta = _quant_paged_cache([300, 1, 65], 16, 2, 80, torch.float16, device,
                                                               quant_policy)
    q = torch.randn(3, 8, 80, dtype=torch.float16, device=device)
    out = decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, 0.1, k_scale_zero=k_sz,
                           v_scale_zero=v_sz, num_splits=num_splits)
    assert_attention_close(out, reference.paged_attention(q, k_cache, v_cache, meta, 0.1, k_sz, v_sz))


@pytest.mark.parametrize("quant_policy", [0, 8, 4])
@pytest.mark.parametrize("cuda_cores", [True, False])
@pytest.mark.parametrize("num_splits", [None, 1, 5])
def test_mha_both_kernels(device, assert_attention_close, quant_policy, cuda_cores, num_splits) -> None:
    """Hq == Hkv: the CUDA-core kernel (scales folded into row sums) and the tensor-core one agree with the
    reference, on fp and quantized caches, an odd head dim, and a graph-padding row of seq_len 0."""
    torch.manual_seed(5)
    seq_lens, hkv, d, dtype = [300, 1, 65, 2049], 4, 80, torch.float16
    if quant_policy:
        (k_cache, v_cache, k_sz, v_sz), meta = _quant_paged_cache(seq_lens, 16, hkv, d, dtype, device, quant_policy)
        scales = {"k_scale_zero": k_sz, "v_scale_zero": v_sz}
    else:
        k_cache, v_cache, meta = _paged_cache(seq_lens, 16, hkv, d, dtype, device)
        scales = {}
    seq_lens_t = meta.seq_lens.clone()
    seq_lens_t[1] = 0
    q = torch.randn(len(seq_lens), hkv, d, dtype=dtype, device=device)
    out = decode_attention(q, k_cache, v_cache, meta.block_tables, seq_lens_t, 0.1, num_splits=num_splits,
                           cuda_cores=cuda_cores, **scales)
    ref = reference.paged_attention(q, k_cache, v_cache, meta, 0.1, *scales.values())
    assert (out[1] == 0).all()
    keep = [0, 2, 3]
    assert_attention_close(out[keep], ref[keep])


def test_cuda_core_kernel_is_for_mha_only(device) -> None:
    k_cache, v_cache, meta = _paged_cache([5], 16, 2, 64, torch.float16, device)
    q = torch.randn(1, 4, 64, dtype=torch.float16, device=device)
    with pytest.raises(ValueError, match="MHA"):
        decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, 0.1, cuda_cores=True)
