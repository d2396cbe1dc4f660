"""Block-scaled FP8 GEMM (w8a8) and per-token-group activation quantization, in Triton.

Twins: reference_fp8.per_token_group_quant_fp8 / w8a8_block_fp8_matmul / fp8_block_linear. Layout and
scales as described there: weight W [N, K] float8 with scales [ceil(N / bn), ceil(K / bk)], activations
quantized per token in groups of bk. Each program computes one [BLOCK_M, BLOCK_N] tile of C; BLOCK_K
divides bk, so a K tile has one activation scale per row and one weight scale per column:

    acc += dot(A_q tile, W_q tile^T) * a_scale[rows, k // bk][:, None] * w_scale[cols // bn, k // bk][None, :]

Needs FP8 tensor cores (compute capability 8.9+: Ada, Hopper).
"""

from __future__ import annotations

import torch

from interndeploy.kernels._triton import cdiv, check, next_power_of_2, tl, triton
from interndeploy.kernels.reference_fp8 import FP8_DTYPE, FP8_MAX, SCALE_EPS


@triton.jit
def _per_token_group_quant_kernel(
    X,
    Q,
    S,
    stride_xm,
    stride_qm,
    stride_sm,
    n_cols,
    groups_per_row,
    group_size,
    eps,
    fp8_max,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // groups_per_row
    group = pid % groups_per_row
    offs = tl.arange(0, BLOCK)
    cols = group * group_size + offs
    mask = (offs < group_size) & (cols < n_cols)
    x = tl.load(X + row * stride_xm + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 0), eps) / fp8_max
    q = tl.clamp(x / scale, -fp8_max, fp8_max)
    tl.store(Q + row * stride_qm + cols, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row * stride_sm + group, scale)


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (float8 [M, K], scale fp32 [M, ceil(K / group_size)])."""
    check(x.dim() == 2 and x.stride(-1) == 1, f"x must be [M, K] contiguous in K, got {tuple(x.shape)}")
    m, k = x.shape
    groups = cdiv(k, group_size)
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((m, groups), dtype=torch.float32, device=x.device)
    if m:
        _per_token_group_quant_kernel[(m * groups,)](
            x, q, s, x.stride(0), q.stride(0), s.stride(0), k, groups, group_size, SCALE_EPS, FP8_MAX,
            BLOCK=next_power_of_2(group_size), num_warps=1 if group_size <= 128 else 4,
        )  # fmt: skip
    return q, s


@triton.jit
def _w8a8_block_fp8_matmul_kernel(
    A,
    W,
    C,
    AScale,
    WScale,
    M,
    N,
    K,
    group_n,
    group_k,
    stride_am,
    stride_ak,
    stride_wn,
    stride_wk,
    stride_cm,
    stride_cn,
    stride_asm,
    stride_ask,
    stride_wsn,
    stride_wsk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped order: GROUP_M row tiles share each column tile of W while it is in L2
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # rows / columns past the edge wrap around (always in bounds); the store masks them
    offs_m = ((pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M).to(tl.int64)
    offs_n = ((pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = W + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    as_ptrs = AScale + offs_m * stride_asm
    ws_ptrs = WScale + (offs_n // group_n) * stride_wsn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - kt * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        w = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        k_group = (kt * BLOCK_K) // group_k
        a_s = tl.load(as_ptrs + k_group * stride_ask)
        w_s = tl.load(ws_ptrs + k_group * stride_wsk)
        acc += tl.dot(a, w) * a_s[:, None] * w_s[None, :]
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = C + rows[:, None].to(tl.int64) * stride_cm + cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


def _tile_config(m: int, group_k: int) -> dict[str, int]:
    block_k = min(group_k, 128)
    if m <= 16:  # decode: thin A, stream W
        return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": block_k, "GROUP_M": 1, "num_warps": 4, "num_stages": 4}
    if m <= 64:
        return {"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}


def w8a8_block_fp8_matmul(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    block: tuple[int, int],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """A_q [M, K] fp8, a_scale [M, ceil(K / bk)], W [N, K] fp8, weight_scale [ceil(N / bn), ceil(K / bk)] -> [M, N]."""
    bn, bk = block
    m, k = a_q.shape
    n = weight.shape[0]
    check(a_q.dtype == FP8_DTYPE and weight.dtype == FP8_DTYPE, f"need float8_e4m3fn, got {a_q.dtype}, {weight.dtype}")
    check(weight.shape[1] == k, f"A {tuple(a_q.shape)} and W {tuple(weight.shape)} disagree on K")
    check(tuple(a_scale.shape) == (m, cdiv(k, bk)), f"a_scale {tuple(a_scale.shape)} for A {tuple(a_q.shape)}")
    check(tuple(weight_scale.shape) == (cdiv(n, bn), cdiv(k, bk)), f"weight_scale {tuple(weight_scale.shape)}")
    check(bk % 16 == 0 and (bk <= 128 or bk % 128 == 0), f"block_k {bk} must be a multiple of 16 (of 128 above it)")
    check(a_scale.dtype == torch.float32 and weight_scale.dtype == torch.float32, "scales must be float32")
    out = torch.empty((m, n), dtype=out_dtype, device=a_q.device)
    if m == 0:
        return out
    cfg = _tile_config(m, bk)
    grid = (cdiv(m, cfg["BLOCK_M"]) * cdiv(n, cfg["BLOCK_N"]),)
    _w8a8_block_fp8_matmul_kernel[grid](
        a_q, weight, out, a_scale, weight_scale, m, n, k, bn, bk,
        a_q.stride(0), a_q.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        a_scale.stride(0), a_scale.stride(1), weight_scale.stride(0), weight_scale.stride(1),
        **cfg,
    )  # fmt: skip
    return out


def fp8_block_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    block: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T (+ bias): x [..., K] (bf16/fp16) quantized per token group, W block FP8 -> [..., N] in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    q, s = per_token_group_quant_fp8(x2, block[1])
    y = w8a8_block_fp8_matmul(q, s, weight, weight_scale, block, x.dtype)
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], weight.shape[0])
