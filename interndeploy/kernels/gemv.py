"""Batch-1 linear: y [1, N] = x [1, K] @ W^T, W [N, K] row-major, 16-bit (twin: torch's F.linear) or FP8 with
block scales (W8A16; twin: F.linear on reference_fp8.block_dequant).

A decode step of one sequence reads every weight once and does two flops per weight, so its linears are
bandwidth-bound matrix-vector products. cuBLAS picks split-K algorithms with a separate reduce kernel for the
narrow layers (o_proj, down_proj) and reaches ~70 % of the copy bandwidth there; this kernel gives each program
BLOCK_N whole rows of W, streams them in [BLOCK_N, BLOCK_K] tiles (16-byte loads along K), keeps element-wise
fp32 products in registers and reduces over K once at the end: no split, no second kernel, no atomics.

Configurations (BLOCK_N, BLOCK_K, warps, stages) come from `scripts/gpu_gemv_sweep.py` on an H100.

Launched as a dependent kernel (PDL, `_triton.pdl_launch`), a program's first act is to ask L2 for the first
PREFETCH_BYTES of each of its rows (bulk prefetches, one piece per thread): the weights depend on no earlier kernel, so
their reads start while the kernel before (the norm or attention that produces x) is still finishing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from interndeploy.kernels._triton import cdiv, check, pdl_launch, pdl_wait, tl, triton


@dataclass(frozen=True, slots=True)
class GemvConfig:
    block_n: int = 16
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 3
    row_sum: bool = False  # reduce each tile over K into [block_n] sums (fewer registers: longer K tiles)


DEFAULT_CONFIG = GemvConfig()
PREFETCH_BYTES = int(os.environ.get("INTERNDEPLOY_GEMV_PREFETCH", 4096))  # per row, into L2, before the wait


@triton.jit
def _prefetch_rows_l2(row_ptrs, nbytes):
    """cp.async.bulk.prefetch.L2 of `nbytes` (a multiple of 16) from each 16-byte aligned pointer; the tensor
    has one element per thread, so no two threads ask for the same bytes."""
    tl.inline_asm_elementwise(
        "cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;",
        "=r,l,r",
        [row_ptrs.to(tl.int64), nbytes],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


def pick_config(n: int, k: int, fp8: bool = False) -> GemvConfig:
    """The sweep's winners on an H100 (scripts/gpu_gemv_sweep.py: weights rotated past L2, kernels launched
    dependent as in a decode step), as a rule of N and K, at the InternLM2.5-7B and Qwen3-8B layers and their
    halves under TP=2. 16-bit: 8 rows x 2048-column tiles, 4 warps (88-107 % of the copy bandwidth on the
    bytes read; a narrow N < 4096 wants 2 rows x 1024 to launch enough programs). FP8: 4 rows x 4096 columns,
    each tile summed over K at once (`row_sum`: the long tile fits in registers), 3 stages (72-97 %)."""
    cap = max(16, 1 << (k - 1).bit_length())
    if fp8:
        return GemvConfig(4, min(4096, cap), 4, 3, row_sum=True)
    block_k = min(2048 if n >= 4096 else 1024, cap)
    return GemvConfig(8 if n >= 4096 else 2, block_k, 4, 2)


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    out_ptr,
    N,
    K,
    stride_wn,
    stride_sn,
    stride_sk,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    SCALE_BN: tl.constexpr,
    SCALE_BK: tl.constexpr,
    ROW_SUM: tl.constexpr,
    PREFETCH: tl.constexpr,
    PREFETCH_CHUNKS: tl.constexpr,
    PREFETCH_STEP: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    if PREFETCH > 0:
        # BLOCK_N x PREFETCH_CHUNKS pieces of PREFETCH bytes: one per thread
        first = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None] * stride_wn
        piece = tl.arange(0, PREFETCH_CHUNKS)[None, :] * PREFETCH_STEP
        _prefetch_rows_l2(first + piece, tl.full([BLOCK_N, PREFETCH_CHUNKS], PREFETCH, tl.int32))
    pdl_wait(USE_PDL)
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    # FP8 block scales: BLOCK_N divides SCALE_BN, so a program's rows share one row of scales, and the scale
    # of weight (n, k) folds into x[k]: one [BLOCK_K] multiply per tile instead of one per weight
    s_row = s_ptr + ((pid * BLOCK_N) // SCALE_BN) * stride_sn
    if ROW_SUM:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            x = tl.load(x_ptr + offs_k).to(tl.float32)
            w = tl.load(rows + offs_k[None, :], mask=mask_n[:, None], other=0.0)
            if HAS_SCALE:
                x = x * tl.load(s_row + (offs_k // SCALE_BK) * stride_sk)
        else:
            mask_k = offs_k < K
            x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            w = tl.load(rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            if HAS_SCALE:
                x = x * tl.load(s_row + (offs_k // SCALE_BK) * stride_sk, mask=mask_k, other=0.0)
        if ROW_SUM:
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        else:
            acc += w.to(tl.float32) * x[None, :]
    if ROW_SUM:
        out = acc
    else:
        out = tl.sum(acc, axis=1)
    tl.store(out_ptr + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """One row of a 16-bit activation against a row-major weight of the same dtype, on a GPU."""
    return (
        x.is_cuda
        and x.dim() == 2
        and x.shape[0] == 1
        and x.dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == x.dtype
        and weight.dim() == 2
        and weight.stride(1) == 1
        and x.stride(1) == 1
    )


def gemv(x: torch.Tensor, weight: torch.Tensor, config: GemvConfig | None = None) -> torch.Tensor:
    """x [1, K] @ weight[N, K]^T -> [1, N] in x's dtype (fp32 accumulation)."""
    check(supports(x, weight), f"gemv takes x [1, K] and a row-major 16-bit weight, got {tuple(x.shape)}")
    return _launch(x, weight, None, (1, 1), config)


def supports_fp8_block(x: torch.Tensor, weight: torch.Tensor, block: tuple[int, int]) -> bool:
    """One 16-bit row against a row-major FP8 weight with [bn, bk] block scales whose bn the row tiles divide."""
    return (
        x.is_cuda
        and x.dim() == 2
        and x.shape[0] == 1
        and x.dtype in (torch.float16, torch.bfloat16)
        and x.stride(1) == 1
        and weight.dtype == torch.float8_e4m3fn
        and weight.dim() == 2
        and weight.stride(1) == 1
        and block[0] % 16 == 0
    )


def gemv_fp8_block(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """x [1, K] @ (weight [N, K] FP8 * scale_inv[n // bn, k // bk])^T -> [1, N] in x's dtype: W8A16, the
    activations stay 16-bit (a batch-1 step reads half the bytes of bf16 and quantizes nothing)."""
    check(supports_fp8_block(x, weight, block), f"gemv_fp8_block takes x [1, K] and an FP8 weight, got {x.shape}")
    n, k = weight.shape
    check(scale_inv.shape == (cdiv(n, block[0]), cdiv(k, block[1])), f"scales {tuple(scale_inv.shape)} for {n}x{k}")
    return _launch(x, weight, scale_inv, block, config)


def _launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, block: tuple[int, int],
            config: GemvConfig | None) -> torch.Tensor:
    n, k = weight.shape
    check(x.shape[1] == k, f"x has {x.shape[1]} columns, weight {k}")
    config = config or pick_config(n, k, fp8=scale is not None)
    if scale is not None:
        check(block[0] % config.block_n == 0, f"BLOCK_N {config.block_n} must divide the scale block {block[0]}")
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    s = scale if scale is not None else weight  # never read without HAS_SCALE
    pdl = pdl_launch(x.device)
    row_bytes = k * weight.element_size()
    aligned = weight.data_ptr() % 16 == 0 and weight.stride(0) * weight.element_size() % 16 == 0
    prefetch = min(PREFETCH_BYTES, row_bytes // 16 * 16) if pdl["USE_PDL"] and aligned else 0
    chunks = max(1, config.num_warps * 32 // config.block_n)
    while chunks > 1 and prefetch // chunks < 128:  # pieces of at least a cache line
        chunks //= 2
    piece_bytes = prefetch // chunks // 16 * 16
    _gemv_kernel[(cdiv(n, config.block_n),)](
        x, weight, s, out, n, k, weight.stride(0),
        s.stride(0) if scale is not None else 0, s.stride(1) if scale is not None else 0,
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, EVEN_K=k % config.block_k == 0, ROW_SUM=config.row_sum,
        HAS_SCALE=scale is not None, SCALE_BN=block[0], SCALE_BK=block[1], PREFETCH=piece_bytes,
        PREFETCH_CHUNKS=chunks, PREFETCH_STEP=piece_bytes // weight.element_size(),
        num_warps=config.num_warps, num_stages=config.num_stages, **pdl,
    )  # fmt: skip
    return out
