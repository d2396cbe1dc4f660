"""Triton W4A16 GEMM / GEMV on AWQ-packed weights against the torch twin (reference_awq.awq_gemm)."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference_awq
from interndeploy.kernels.awq_gemm import DEQUANT_MIN_M, GEMV_MAX_M, AwqLaunch, awq_dequantize, awq_gemm, supports

pytestmark = pytest.mark.gpu


def _weights(k: int, n: int, group: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=g)
    z = torch.randint(0, 16, (k // group, n), generator=g)
    s = (torch.rand(k // group, n, generator=g) * 0.02 + 0.002).to(dtype)
    return (reference_awq.pack_int4(q).to(device), s.to(device), reference_awq.pack_int4(z).to(device))


def _check(out: torch.Tensor, x: torch.Tensor, qw: torch.Tensor, s: torch.Tensor, qz: torch.Tensor) -> None:
    # the kernel scales fp32 partial sums; the twin rounds the weight to x's dtype first: compare both with fp64
    ref = x.double() @ reference_awq.awq_dequantize(qw, s, qz, torch.float64)
    err = float((out.double() - ref).norm() / ref.norm())
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert err < (1e-2 if x.dtype == torch.bfloat16 else 2e-3), err
    twin = reference_awq.awq_gemm(x, qw, s, qz).double()
    assert float((twin - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.parametrize("m", sorted({1, 2, 5, 8, GEMV_MAX_M, 9, 64, DEQUANT_MIN_M - 1, DEQUANT_MIN_M, 300}))
@pytest.mark.parametrize("k, n, group", [(128, 256, 128), (256, 264, 32), (512, 1024, 64), (4096, 512, 128)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_twin(device: str, m: int, k: int, n: int, group: int, dtype: torch.dtype) -> None:
    if device == "cpu" and dtype == torch.bfloat16 and m > GEMV_MAX_M:
        pytest.skip("Triton's interpreter mis-reads bf16 tl.dot operands")
    qw, s, qz = _weights(k, n, group, dtype, device)
    x = torch.randn(m, k, dtype=dtype, device=device)
    assert supports(x, qw, s)
    _check(awq_gemm(x, qw, s, qz), x, qw, s, qz)


@pytest.mark.parametrize(("k", "n", "group"), [(128, 256, 128), (96, 264, 32), (4096, 512, 128)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dequantize_equals_twin(device: str, k: int, n: int, group: int, dtype: torch.dtype) -> None:
    """The prefill path's one-off dequantization: the twin's values (both compute in fp32; bf16 within one
    rounding step, since Triton's CPU interpreter truncates where the GPU rounds)."""
    qw, s, qz = _weights(k, n, group, torch.float16, device)
    torch.testing.assert_close(awq_dequantize(qw, s, qz, dtype), reference_awq.awq_dequantize(qw, s, qz, dtype),
                               rtol=2**-7 if dtype == torch.bfloat16 else 0, atol=0)


def test_whole_row_group_and_fp32_scales(device: str) -> None:
    """group = K (AWQ's group_size -1) and scales in another dtype than the activations."""
    k, n = 256, 128
    qw, s, qz = _weights(k, n, k, torch.float32, device)
    x = torch.randn(3, k, dtype=torch.float16, device=device)
    _check(awq_gemm(x, qw, s, qz), x, qw, s, qz)


def test_strided_rows_and_fallbacks(device: str) -> None:
    k, n = 256, 256
    qw, s, qz = _weights(k, n, 64, torch.float16, device)
    x = torch.randn(4, 2 * k, dtype=torch.float16, device=device)[:, :k]  # row stride 2K
    _check(awq_gemm(x, qw, s, qz), x, qw, s, qz)
    x32 = torch.randn(4, k, device=device)
    assert not supports(x32, qw, s)  # fp32 activations take the twin
    torch.testing.assert_close(awq_gemm(x32, qw, s, qz), reference_awq.awq_gemm(x32, qw, s, qz))


def test_layer_on_cuda_uses_kernel(cuda: str) -> None:
    """The AWQ linear method on CUDA runs the kernel and agrees with its CPU (dequantize-once) path."""
    from interndeploy.layers.linear import ColumnLinear
    from interndeploy.quant.awq_linear import AWQConfig, AWQLinearMethod

    torch.manual_seed(0)
    layer = ColumnLinear(256, 512, bias=True, quant_method=AWQLinearMethod(AWQConfig(group_size=64)))
    qw, s, qz = _weights(256, 512, 64, torch.float16, "cpu")
    with torch.no_grad():
        layer.qweight.copy_(qw)
        layer.scales.copy_(s.float())
        layer.qzeros.copy_(qz)
        layer.bias.copy_(torch.randn(512))
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(2, 3, 256)
    ref = layer(x)
    layer.to(cuda, torch.float16)  # casts scales and bias; the packed int32 parameters keep their dtype
    assert layer.qweight.dtype == torch.int32
    out = layer(x.to(cuda, torch.float16))
    assert out.shape == (2, 3, 512)
    assert float((out.float().cpu() - ref).norm() / ref.norm()) < 2e-3


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("k, n, group", [(128, 256, 128), (256, 264, 32), (4096, 512, 128), (14336, 1024, 128)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "launch",
    [AwqLaunch("gemv", 1, 128, 64, 4, 2), AwqLaunch("gemv", 1, 256, 128, 8, 3, splits=4),
     AwqLaunch("gemv", 1, 128, 32, 4, 2, splits=2), AwqLaunch("gemm", 16, 64, 32, 4, 3, splits=8)],
    ids=str,
)
def test_every_launch_kind_matches_twin(
    device: str, m: int, k: int, n: int, group: int, dtype: torch.dtype, launch: AwqLaunch
) -> None:
    if device == "cpu" and dtype == torch.bfloat16 and launch.kind == "gemm":
        pytest.skip("Triton's interpreter mis-reads bf16 tl.dot operands")
    if group % launch.block_k:
        launch = AwqLaunch(launch.kind, launch.block_m, launch.block_n, group, launch.num_warps, launch.num_stages,
                           launch.splits)
    qw, s, qz = _weights(k, n, group, dtype, device, seed=k + n)
    x = torch.randn(m, k, dtype=dtype, device=device)
    _check(awq_gemm(x, qw, s, qz, launch), x, qw, s, qz)
