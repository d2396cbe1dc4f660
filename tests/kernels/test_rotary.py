"""Rotate-half RoPE (Triton) against the reference, on views of a packed qkv output, in and out of place."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.rotary import apply_rotary

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("num_tokens", [1, 37])
@pytest.mark.parametrize(("hq", "hkv", "d"), [(32, 8, 128), (8, 8, 64), (4, 2, 16), (6, 1, 80)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_matches_reference(device, assert_ulp_close, num_tokens: int, hq: int, hkv: int, d: int, dtype) -> None:
    torch.manual_seed(0)
    qkv = torch.randn(num_tokens, (hq + 2 * hkv) * d, dtype=dtype, device=device)
    q = qkv[:, : hq * d].view(num_tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(num_tokens, hkv, d)
    angles = torch.rand(num_tokens, d // 2, device=device) * 1000
    cos, sin = angles.cos(), angles.sin()
    ref_q, ref_k = reference.apply_rotary(q, k, cos, sin)
    out_q, out_k = apply_rotary(q, k, cos, sin)
    assert_ulp_close(out_q, ref_q)
    assert_ulp_close(out_k, ref_k)
    v_before = qkv[:, (hq + hkv) * d :].clone()
    in_q, in_k = apply_rotary(q, k, cos, sin, inplace=True)
    assert in_q.data_ptr() == q.data_ptr() and in_k.data_ptr() == k.data_ptr()
    assert_ulp_close(q, ref_q)
    assert_ulp_close(k, ref_k)
    assert torch.equal(qkv[:, (hq + hkv) * d :], v_before)  # v untouched
