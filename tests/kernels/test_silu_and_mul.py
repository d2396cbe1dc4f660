"""silu(gate) * up (Triton) against the reference."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.silu_and_mul import silu_and_mul

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape", [(1, 2 * 14336), (37, 2 * 1000), (3, 4, 2 * 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_matches_reference(device: str, assert_ulp_close, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, device=device) * 4
    out = silu_and_mul(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    assert_ulp_close(out, reference.silu_and_mul(x))
