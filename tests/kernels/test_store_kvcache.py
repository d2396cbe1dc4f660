"""store_kvcache (Triton) against the reference: same cache contents (int8 / int4 codes and scales too),
padding slots skipped."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.store_kvcache import store_kvcache
from interndeploy.quant.kv import KVCacheLayout

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("block_size", [16, 64])
@pytest.mark.parametrize(("hkv", "d"), [(8, 128), (2, 64), (1, 80)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference(device: str, block_size: int, hkv: int, d: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    num_blocks, t = 9, 37
    # k / v as views of a packed qkv output: token stride > Hkv * D
    qkv = torch.randn(t, (4 + 2) * hkv * d, dtype=dtype, device=device)
    k = qkv[:, 4 * hkv * d : 5 * hkv * d].view(t, hkv, d)
    v = qkv[:, 5 * hkv * d :].view(t, hkv, d)
    slots = torch.randperm(num_blocks * block_size, device=device)[:t]
    slots[[0, 5, t - 1]] = -1  # padding tokens
    k_cache = torch.full((num_blocks, block_size, hkv, d), float("nan"), dtype=dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    store_kvcache(k, v, k_cache, v_cache, slots)
    reference.store_kvcache(k, v, ref_k, ref_v, slots)
    torch.testing.assert_close(k_cache, ref_k, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, ref_v, atol=0, rtol=0, equal_nan=True)
    assert int(torch.isfinite(k_cache).all(-1).all(-1).sum()) == t - 3  # exactly the valid slots were written


@pytest.mark.parametrize("quant_policy", [8, 4])
@pytest.mark.parametrize(("hkv", "d"), [(8, 128), (2, 64), (1, 80)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantized_matches_reference(device: str, quant_policy: int, hkv: int, d: int, dtype: torch.dtype) -> None:
    """int8 / int4 codes and (scale, zero) bit for bit as the reference writes them; padding slots untouched."""
    torch.manual_seed(0)
    num_blocks, block_size, t = 9, 16, 37
    qkv = torch.randn(t, 6 * hkv * d, dtype=dtype, device=device) * 3 + 1
    k = qkv[:, 4 * hkv * d : 5 * hkv * d].view(t, hkv, d)
    v = qkv[:, 5 * hkv * d :].view(t, hkv, d)
    k[1, 0] = 0.5  # a constant row: scale floored at SCALE_EPS
    slots = torch.randperm(num_blocks * block_size, device=device)[:t]
    slots[[0, 5, t - 1]] = -1
    k_cache, v_cache, k_sz, v_sz = KVCacheLayout(quant_policy, d, dtype).allocate(num_blocks, block_size, hkv, device)
    for c in (k_cache, v_cache):
        c.fill_(0xAB)
    for s in (k_sz, v_sz):
        s.fill_(float("nan"))
    ref = [x.clone() for x in (k_cache, v_cache, k_sz, v_sz)]
    store_kvcache(k, v, k_cache, v_cache, slots, k_sz, v_sz)
    reference.store_kvcache(k, v, *ref[:2], slots, *ref[2:])
    assert torch.equal(k_cache, ref[0]) and torch.equal(v_cache, ref[1])
    torch.testing.assert_close(k_sz, ref[2], atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(v_sz, ref[3], atol=0, rtol=0, equal_nan=True)
    assert int(torch.isfinite(k_sz).all(-1).all(-1).sum()) == t - 3
