"""Triton batch-1 GEMV on 16-bit weights against its twin, F.linear in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interndeploy.kernels.gemv import GemvConfig, gemv, gemv_fp8_block, supports, supports_fp8_block
from interndeploy.kernels.reference_fp8 import block_dequant

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("k", "n"), [(4096, 6144), (14336, 4096), (4096, 92544), (1000, 37), (96, 5)])
@pytest.mark.parametrize(
    "cfg", [GemvConfig(), GemvConfig(8, 256, 4, 2), GemvConfig(32, 1024, 8, 4), GemvConfig(8, 2048, 4, 2, row_sum=True)]
)
def test_gemv_matches_linear(dtype: torch.dtype, k: int, n: int, cfg: GemvConfig) -> None:
    g = torch.Generator(device="cuda").manual_seed(k + n)
    x = torch.randn(1, k, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) * k**-0.5
    out = gemv(x, w, cfg)
    ref = F.linear(x.float(), w.float())
    assert out.dtype == dtype and out.shape == (1, n)
    assert float((out.float() - ref).norm() / ref.norm()) < 5e-3


def test_supports_only_one_row_of_matching_dtype() -> None:
    w = torch.randn(8, 16, device="cuda", dtype=torch.bfloat16)
    assert supports(torch.randn(1, 16, device="cuda", dtype=torch.bfloat16), w)
    assert not supports(torch.randn(2, 16, device="cuda", dtype=torch.bfloat16), w)
    assert not supports(torch.randn(1, 16, device="cuda", dtype=torch.float32), w)
    assert not supports(torch.randn(1, 16, device="cuda", dtype=torch.bfloat16), w.t())


@pytest.mark.parametrize(("k", "n"), [(4096, 6144), (14336, 4096), (1000, 200), (256, 384)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cfg", [None, GemvConfig(8, 4096, 4, 2, row_sum=True)])
def test_fp8_block_gemv_matches_dequantized_linear(k: int, n: int, dtype: torch.dtype, cfg: GemvConfig | None) -> None:
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+")
    block = (128, 128)
    g = torch.Generator(device="cuda").manual_seed(n)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.5).to(torch.float8_e4m3fn)
    scale = torch.rand(-(-n // 128), -(-k // 128), device="cuda", generator=g) * 0.01 + 1e-3
    x = torch.randn(1, k, device="cuda", dtype=dtype, generator=g)
    assert supports_fp8_block(x, w, block)
    out = gemv_fp8_block(x, w, scale, block, cfg)
    ref = x.float() @ block_dequant(w, scale, block).T
    assert out.dtype == dtype and out.shape == (1, n)
    assert float((out.float() - ref).norm() / ref.norm()) < 5e-3
