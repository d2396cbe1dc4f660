"""Fused mixture of experts in Triton: two grouped GEMMs over the tokens sorted by expert.

Twin: reference_moe.fused_moe (same arguments, same layout). The T * k (token, slot) pairs are sorted by
expert and each expert's run is padded to a multiple of BLOCK_M (`moe_align_block_size`):

    pairs        p = t * k + j, routed to expert topk_ids[t, j]
    sorted_ids   [e0 e0 e0 pad | e3 pad pad pad | e7 e7 e7 e7 | ...]     pad = T * k (masked out)
    expert_ids   [e0           | e3             | e7          | ...]    one per BLOCK_M rows

so every M tile of the GEMM belongs to one expert and reads only that expert's weights; experts the batch
does not touch cost nothing. All of it stays on the device, with shapes fixed by T (CUDA-graph safe):

    gemm 1   inter[p] = x[p // k] @ w13[e]^T             [T * k, 2I]
             act = silu(gate) * up                          [T * k, I]
    gemm 2   y[p] = topk_weights[p] * act[p] @ w2[e]^T   [T * k, H]
    out[t] = sum_j y[t * k + j]                             [T, H]

FP8 (block scales given): activations are quantized per token group of bk before each GEMM, and the
kernel applies one activation scale per row and one weight scale per bn output columns per K tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interndeploy.kernels._triton import cdiv, check, tl, triton
from interndeploy.kernels.reference_fp8 import FP8_DTYPE


@triton.jit
def _fused_moe_kernel(
    A,
    B,
    C,
    AScale,
    BScale,
    TopkWeights,
    SortedIds,
    ExpertIds,
    NumPostPadded,
    N,
    K,
    num_pairs,
    num_rows,
    group_n,
    group_k,
    stride_am,
    stride_ak,
    stride_be,
    stride_bn,
    stride_bk,
    stride_cm,
    stride_cn,
    stride_asm,
    stride_ask,
    stride_bse,
    stride_bsn,
    stride_bsk,
    ROWS_PER_PAIR: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr,
    USE_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C[p] (+)= A[p // ROWS_PER_PAIR] @ B[expert]^T for the pairs p of one M tile of sorted_ids."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(num_rows, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    if pid_m * BLOCK_M >= tl.load(NumPostPadded):
        return  # past the last expert's padded run
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(SortedIds + offs_m).to(tl.int64)
    pair_mask = pairs < num_pairs
    expert = tl.load(ExpertIds + pid_m).to(tl.int64)
    a_rows = pairs // ROWS_PER_PAIR

    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = B + expert * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    if USE_FP8:
        as_ptrs = AScale + a_rows * stride_asm
        bs_ptrs = BScale + expert * stride_bse + (offs_n // group_n) * stride_bsn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - kt * BLOCK_K
        a = tl.load(a_ptrs, mask=pair_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & n_mask[None, :], other=0.0)
        if USE_FP8:
            k_group = (kt * BLOCK_K) // group_k
            a_s = tl.load(as_ptrs + k_group * stride_ask, mask=pair_mask, other=0.0)
            b_s = tl.load(bs_ptrs + k_group * stride_bsk, mask=n_mask, other=0.0)
            acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        else:
            acc += tl.dot(a, b)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if MUL_ROUTED_WEIGHT:
        w = tl.load(TopkWeights + pairs, mask=pair_mask, other=0.0).to(tl.float32)
        acc = acc * w[:, None]
    c_ptrs = C + pairs[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=pair_mask[:, None] & n_mask[None, :])


def moe_align_block_size(
    topk_ids: torch.Tensor, block_m: int, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the (token, slot) pairs by expert, padding each expert's run to a multiple of block_m.

    Returns sorted_ids [R] int32 (pair index t * k + j, or T * k for padding), expert_ids [R / block_m] int32
    (the expert of each M tile; tiles past the end hold a valid but unused id) and num_post_padded [1]
    int32 (rows in use). R = T * k + min(E, T * k) * (block_m - 1) rounded up to block_m, fixed by the
    shape, so this runs without a host sync (scatter_add, not bincount, which syncs on CUDA).
    """
    flat = topk_ids.flatten().long()
    num_pairs = flat.numel()
    device = flat.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_ends = torch.cumsum(padded, 0)
    padded_starts = padded_ends - padded
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    rank = torch.arange(num_pairs, device=device) - starts[sorted_experts]
    rows = cdiv(num_pairs + min(num_experts, num_pairs) * (block_m - 1), block_m) * block_m
    sorted_ids = torch.full((rows,), num_pairs, dtype=torch.int32, device=device)
    sorted_ids[padded_starts[sorted_experts] + rank] = order.to(torch.int32)
    tile_starts = torch.arange(0, rows, block_m, device=device)
    expert_ids = torch.searchsorted(padded_ends, tile_starts, right=True).clamp_(max=num_experts - 1)
    return sorted_ids, expert_ids.to(torch.int32), padded_ends[-1:].to(torch.int32)


def _config(num_pairs: int, num_experts: int, group_k: int | None) -> dict[str, int]:
    """Tile sizes: small M tiles when few pairs land on each expert (decode), larger ones for prefill."""
    per_expert = num_pairs / num_experts
    block_k = min(group_k, 128) if group_k else 64
    if per_expert <= 8:
        cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "GROUP_M": 1, "num_warps": 4, "num_stages": 4}
    elif per_expert <= 64:
        cfg = {"BLOCK_M": 32, "BLOCK_N": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    else:
        cfg = {"BLOCK_M": 64, "BLOCK_N": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    return {**cfg, "BLOCK_K": block_k}


def _grouped_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    b: torch.Tensor,
    b_scale: torch.Tensor | None,
    out: torch.Tensor,
    topk_weights: torch.Tensor | None,
    align: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    rows_per_pair: int,
    block_shape: tuple[int, int] | None,
    cfg: dict[str, int],
) -> None:
    sorted_ids, expert_ids, num_post_padded = align
    n, k = b.shape[1], b.shape[2]
    group_n, group_k = block_shape or (1, 1)
    fp8 = b_scale is not None
    a_scale_ = a_scale if fp8 else a  # unused placeholders when unquantized
    b_scale_ = b_scale if fp8 else b
    grid = (cdiv(sorted_ids.numel(), cfg["BLOCK_M"]) * cdiv(n, cfg["BLOCK_N"]),)
    _fused_moe_kernel[grid](
        a, b, out, a_scale_, b_scale_, topk_weights if topk_weights is not None else out,
        sorted_ids, expert_ids, num_post_padded,
        n, k, out.shape[0], sorted_ids.numel(), group_n, group_k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), out.stride(0), out.stride(1),
        a_scale_.stride(0) if fp8 else 0, a_scale_.stride(1) if fp8 else 0,
        b_scale_.stride(0) if fp8 else 0, b_scale_.stride(1) if fp8 else 0, b_scale_.stride(2) if fp8 else 0,
        ROWS_PER_PAIR=rows_per_pair, MUL_ROUTED_WEIGHT=topk_weights is not None, USE_FP8=fp8,
        **cfg,
    )  # fmt: skip


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    block_shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """x [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_weights/ids [T, k] -> [T, H] in x's dtype."""
    from interndeploy.kernels.fp8_gemm import per_token_group_quant_fp8

    num_tokens, hidden = x.shape
    num_experts, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    fp8 = w13_scale is not None
    check(w13.shape[2] == hidden and w2.shape == (num_experts, hidden, two_i // 2),
          f"x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)} do not fit together")  # fmt: skip
    check(topk_weights.shape == topk_ids.shape and topk_ids.shape[0] == num_tokens, "topk_weights/ids must be [T, k]")
    check(x.stride(-1) == 1 and w13.stride(-1) == 1 and w2.stride(-1) == 1, "x, w13, w2 must be contiguous in K")
    if fp8:
        check(w2_scale is not None and block_shape is not None, "FP8 experts need w13_scale, w2_scale, block_shape")
        check(w13.dtype == FP8_DTYPE and w2.dtype == FP8_DTYPE, f"FP8 experts are {w13.dtype}, {w2.dtype}")
        check(block_shape[1] % 16 == 0 and (block_shape[1] <= 128 or block_shape[1] % 128 == 0),
              f"block_k {block_shape[1]} must be a multiple of 16 (of 128 above it)")  # fmt: skip
    else:
        check(w13.dtype == x.dtype and w2.dtype == x.dtype, f"x is {x.dtype}, experts {w13.dtype}, {w2.dtype}")
    out = torch.empty_like(x)
    if num_tokens == 0:
        return out
    num_pairs = num_tokens * top_k
    cfg = _config(num_pairs, num_experts, block_shape[1] if fp8 else None)
    align = moe_align_block_size(topk_ids, cfg["BLOCK_M"], num_experts)
    weights = topk_weights.reshape(-1).float()

    a, a_scale = x, None
    if fp8:
        a, a_scale = per_token_group_quant_fp8(x, block_shape[1])
    inter = torch.empty((num_pairs, two_i), dtype=x.dtype, device=x.device)
    _grouped_gemm(a, a_scale, w13, w13_scale, inter, None, align, top_k, block_shape, cfg)

    gate, up = inter.chunk(2, dim=-1)
    act = (F.silu(gate) * up).contiguous()
    if fp8:
        act, act_scale = per_token_group_quant_fp8(act, block_shape[1])
    else:
        act_scale = None
    y = torch.empty((num_pairs, hidden), dtype=x.dtype, device=x.device)
    _grouped_gemm(act, act_scale, w2, w2_scale, y, weights, align, 1, block_shape, cfg)
    return torch.sum(y.view(num_tokens, top_k, hidden), dim=1, out=out)
