"""Block-scaled FP8 GEMM and activation quantization (Triton) against their torch twins, and the twins
against plain (dequantized) matmuls within FP8 error."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference_fp8 as ref

FP8_REL = 0.08  # e4m3 keeps 3 mantissa bits: ~6 % per element, averaging down over K


def _rel(out: torch.Tensor, want: torch.Tensor) -> float:
    return float((out.double() - want.double()).norm() / want.double().norm())


@pytest.mark.parametrize("block", [(128, 128), (32, 16), (16, 64)])
@pytest.mark.parametrize("shape", [(256, 384), (100, 70), (1, 16)])
def test_weight_quantization_round_trip(block: tuple[int, int], shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.05
    q, s = ref.quantize_weight_block_fp8(w, block)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert s.shape == (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
    back = ref.block_dequant(q, s, block)
    assert _rel(back, w) < 0.04
    # each tile's absmax lands on the top of the e4m3 range
    assert float(q.float().abs().max()) == ref.FP8_MAX


def test_dequant_rejects_wrong_scale_shape() -> None:
    q, s = ref.quantize_weight_block_fp8(torch.randn(64, 64), (32, 32))
    with pytest.raises(ValueError, match=r"needs scales \(2, 2\)"):
        ref.block_dequant(q, s[:1], (32, 32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w8a8_twin_is_within_fp8_error_of_the_dequantized_matmul(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    block = (32, 32)
    x = torch.randn(7, 96, dtype=dtype)
    w = torch.randn(80, 96) * 0.1
    q, s = ref.quantize_weight_block_fp8(w, block)
    bias = torch.randn(80, dtype=dtype)
    y = ref.fp8_block_linear(x, q, s, block, bias)
    assert y.dtype == dtype and y.shape == (7, 80)
    dequantized = x.float() @ ref.block_dequant(q, s, block).T + bias.float()
    assert _rel(y, dequantized) < FP8_REL
    assert _rel(y, x.float() @ w.T + bias.float()) < FP8_REL


def test_per_token_group_quant_zero_rows() -> None:
    q, s = ref.per_token_group_quant_fp8(torch.zeros(2, 40), 16)
    assert s.shape == (2, 3) and torch.isfinite(s).all() and (q.float() == 0).all()


# --- Triton against the twins (GPU, or TRITON_INTERPRET=1) ---------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 4096), (37, 300), (5, 128)])
@pytest.mark.parametrize("group", [128, 64])
def test_per_token_group_quant_matches_reference(device: str, shape: tuple[int, int], group: int) -> None:
    from interndeploy.kernels.fp8_gemm import per_token_group_quant_fp8

    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=torch.float16 if device == "cpu" else torch.bfloat16) * 3
    q, s = per_token_group_quant_fp8(x, group)
    q_ref, s_ref = ref.per_token_group_quant_fp8(x, group)
    torch.testing.assert_close(s, s_ref, atol=0, rtol=1e-6)
    if device == "cpu":
        return  # Triton's interpreter rounds fp32 -> e4m3 wrongly across a power of two (124.3 -> 64)
    torch.testing.assert_close(q.float(), q_ref.float(), atol=0, rtol=0.07)  # a rounding step apart at most
    assert (q.float() != q_ref.float()).float().mean() < 0.01


@pytest.mark.gpu
@pytest.mark.parametrize(("m", "n", "k"), [(1, 4096, 4096), (16, 384, 512), (33, 200, 300), (300, 1024, 256)])
@pytest.mark.parametrize("block", [(128, 128), (64, 128)])
def test_w8a8_block_matmul_matches_reference(device: str, m: int, n: int, k: int, block: tuple[int, int]) -> None:
    from interndeploy.kernels import fp8_gemm

    if device == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need compute capability 8.9+")
    torch.manual_seed(0)
    a_q, a_s = ref.per_token_group_quant_fp8(torch.randn(m, k, device=device), block[1])
    w_q, w_s = ref.quantize_weight_block_fp8(torch.randn(n, k, device=device) * 0.05, block)
    for dtype in (torch.float16, torch.float32) if device == "cpu" else (torch.bfloat16, torch.float16):
        y = fp8_gemm.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, block, dtype)
        want = ref.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, block, torch.float32)
        assert y.dtype == dtype and y.shape == (m, n)
        assert _rel(y, want) < 5e-3  # same products, fp32 sums in another order, one rounding to dtype


@pytest.mark.gpu
@pytest.mark.parametrize(("m", "n", "k"), [(1, 4096, 4096), (7, 384, 512), (300, 1024, 256)])
def test_fp8_block_linear_matches_reference(cuda: str, m: int, n: int, k: int) -> None:
    from interndeploy.kernels import fp8_gemm

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need compute capability 8.9+")
    torch.manual_seed(0)
    block = (128, 128)
    x = torch.randn(m, k, device=cuda, dtype=torch.bfloat16)
    q, s = ref.quantize_weight_block_fp8(torch.randn(n, k, device=cuda) * 0.05, block)
    bias = torch.randn(n, device=cuda, dtype=torch.bfloat16)
    y = fp8_gemm.fp8_block_linear(x, q, s, block, bias)
    want = ref.fp8_block_linear(x, q, s, block, bias)
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert _rel(y, want) < 1e-2


def test_launcher_rejects_mismatched_inputs() -> None:
    from interndeploy.kernels.fp8_gemm import w8a8_block_fp8_matmul

    a_q, a_s = ref.per_token_group_quant_fp8(torch.randn(4, 64), 32)
    w_q, w_s = ref.quantize_weight_block_fp8(torch.randn(48, 64), (16, 32))
    with pytest.raises(ValueError, match="weight_scale"):
        w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s[:1], (16, 32), torch.float16)
    with pytest.raises(ValueError, match="disagree on K"):
        w8a8_block_fp8_matmul(a_q, a_s, w_q[:, :32], w_s, (16, 32), torch.float16)
    with pytest.raises(ValueError, match="need float8_e4m3fn"):
        w8a8_block_fp8_matmul(a_q.float(), a_s, w_q, w_s, (16, 32), torch.float16)
