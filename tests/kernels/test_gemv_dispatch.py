"""Where batch-1 linears go: the GEMV's launch rule, and F.linear off the GPU (no Triton needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interndeploy.kernels.gemv import pick_config, supports
from interndeploy.layers.linear import dense_linear


@pytest.mark.parametrize(("n", "k"), [(6144, 4096), (4096, 14336), (28672, 4096), (92544, 4096), (37, 5), (8, 1000)])
@pytest.mark.parametrize("fp8", [False, True])
def test_pick_config_is_a_valid_tile(n: int, k: int, fp8: bool) -> None:
    cfg = pick_config(n, k, fp8)
    assert cfg.block_k & (cfg.block_k - 1) == 0 and 16 <= cfg.block_k <= (4096 if fp8 else 2048)
    assert cfg.block_n in (2, 4, 8, 16) and cfg.num_warps in (4, 8)
    assert 128 % cfg.block_n == 0  # FP8 block scales of 128 rows: a program's rows share one row of scales
    assert cfg.block_k <= max(16, 1 << (k - 1).bit_length())  # no tile far past a short row


def test_cpu_rows_take_f_linear() -> None:
    x = torch.randn(1, 32, dtype=torch.bfloat16)
    w = torch.randn(16, 32, dtype=torch.bfloat16)
    b = torch.randn(16, dtype=torch.bfloat16)
    assert not supports(x, w)  # not on a GPU
    torch.testing.assert_close(dense_linear(x, w, b), F.linear(x, w, b))
    torch.testing.assert_close(dense_linear(x.repeat(3, 1), w), F.linear(x.repeat(3, 1), w))
