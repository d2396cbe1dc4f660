"""store_kvcache (Triton) against the reference: same cache contents, padding slots skipped."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.store_kvcache import store_kvcache

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
