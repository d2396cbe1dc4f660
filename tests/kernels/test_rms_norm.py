"""RMSNorm and fused residual-add RMSNorm (Triton) against the reference."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.rms_norm import fused_add_rms_norm, rms_norm

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape", [(1, 64), (37, 4096), (5, 3, 1000), (2, 8192)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_matches_reference(device: str, assert_ulp_close, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, device=device) * 3
    residual = torch.randn(shape, dtype=dtype, device=device)
    w = torch.randn(shape[-1], dtype=dtype, device=device)
    assert_ulp_close(rms_norm(x, w, 1e-5), reference.rms_norm(x, w, 1e-5))
    out, new_residual = fused_add_rms_norm(x, residual, w, 1e-6)
    ref_out, ref_residual = reference.fused_add_rms_norm(x, residual, w, 1e-6)
    assert_ulp_close(new_residual, ref_residual, exact=True)
    assert_ulp_close(out, ref_out)
    assert out.shape == x.shape and out.dtype == dtype


def test_strided_rows(device: str, assert_ulp_close) -> None:
    x = torch.randn(6, 2 * 512, dtype=torch.bfloat16, device=device)[:, :512]  # row stride 1024
    w = torch.randn(512, dtype=torch.bfloat16, device=device)
    assert_ulp_close(rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
