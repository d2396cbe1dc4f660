"""AWQ weights in torch's int4 kernel layout (quant/awq_tinygemm.py): the (scale, zero) conversion on CPU
through torch's CPU twin of the kernel, and the CUDA kernel against the AWQ reference on a GPU."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference_awq
from interndeploy.kernels.reference_awq import pack_int4, unpack_int4
from interndeploy.quant import awq_tinygemm


def _awq(k: int, n: int, group: int, device: str = "cpu", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    qw = pack_int4(torch.randint(0, 16, (k, n), generator=gen)).to(device)
    qz = pack_int4(torch.randint(0, 16, (k // group, n), generator=gen)).to(device)
    sc = (torch.rand(k // group, n, generator=gen) * 0.02 + 0.001).to(torch.float16).to(device)
    return qw, sc, qz


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.skipif(not hasattr(torch, "_weight_int4pack_mm_for_cpu"), reason="torch without the CPU int4 kernel")
@pytest.mark.parametrize("group", [32, 128])
def test_scale_zero_matches_awq_dequantization(group: int) -> None:
    """(q - 8) * scale + zero with our (scale, zero) is AWQ's (q - z) * s, up to bf16 rounding."""
    k, n = 256, 48
    qw, sc, qz = _awq(k, n, group)
    packed = torch._convert_weight_to_int4pack_for_cpu(unpack_int4(qw).t().contiguous(), 8)
    x = torch.randn(5, k, dtype=torch.bfloat16)
    y = torch._weight_int4pack_mm_for_cpu(x, packed, group, awq_tinygemm.scale_zero(sc, qz))
    assert _rel(y, x.double() @ reference_awq.awq_dequantize(qw, sc, qz, torch.float64)) < 1e-2


def test_repack_declines_off_cuda_and_unsupported_groups() -> None:
    qw, sc, qz = _awq(256, 64, 128)
    assert awq_tinygemm.repack(qw, sc, qz) is None  # CPU: the dequantize-once path serves
    assert not awq_tinygemm.kernel_available(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize(("k", "n", "group"), [(4096, 6144, 128), (512, 1024, 64), (1024, 264, 32)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_kernel_matches_reference(m: int, k: int, n: int, group: int, dtype: torch.dtype) -> None:
    qw, sc, qz = _awq(k, n, group, "cuda", seed=m)
    w = awq_tinygemm.repack(qw, sc, qz)
    assert w is not None
    x = torch.randn(m, k, dtype=dtype, device="cuda")
    y = awq_tinygemm.int4_matmul(x, w.packed, w.scale_zero, w.group_size)
    assert y.dtype == dtype and y.shape == (m, n)
    assert _rel(y, x.double() @ reference_awq.awq_dequantize(qw, sc, qz, torch.float64)) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_repack_declines_group_the_kernel_lacks() -> None:
    qw, sc, qz = _awq(512, 64, 512, "cuda")  # one group over all of K
    assert awq_tinygemm.repack(qw, sc, qz) is None
