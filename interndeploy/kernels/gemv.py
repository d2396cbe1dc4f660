"""Batch-1 linear on 16-bit weights: y [1, N] = x [1, K] @ W^T, W [N, K] row-major (twin: torch's F.linear).

A decode step of one sequence reads every weight once and does two flops per weight, so its linears are
bandwidth-bound matrix-vector products. cuBLAS picks split-K algorithms with a separate reduce kernel for the
narrow layers (o_proj, down_proj) and reaches ~70 % of the copy bandwidth there; this kernel gives each program
BLOCK_N whole rows of W, streams them in [BLOCK_N, BLOCK_K] tiles (16-byte loads along K), keeps element-wise
fp32 products in registers and reduces over K once at the end: no split, no second kernel, no atomics.

Configurations (BLOCK_N, BLOCK_K, warps, stages) come from `scripts/gpu_gemv_sweep.py` on an H100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interndeploy.kernels._triton import cdiv, check, tl, triton


@dataclass(frozen=True, slots=True)
class GemvConfig:
    block_n: int = 16
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 3


DEFAULT_CONFIG = GemvConfig()


def pick_config(n: int, k: int) -> GemvConfig:
    """The sweep's winners on an H100 at InternLM2.5-7B's layers, as a rule of N and K: long K tiles,
    8 warps, and rows per program so that narrow layers still launch a few programs per SM
    (qkv 6144x4096: 8 rows; o 4096x4096 and down 4096x14336: 16; gate_up 28672: 4; lm_head 92544: 8)."""
    block_k = 1024 if k >= 1024 else max(16, 1 << (k - 1).bit_length())
    block_n = 16 if n <= 4096 else 8 if n <= 8192 else 4 if n <= 32768 else 8
    return GemvConfig(block_n, block_k, 8, 3)


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    N,
    K,
    stride_wn,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            x = tl.load(x_ptr + offs_k)
            w = tl.load(rows + offs_k[None, :], mask=mask_n[:, None], other=0.0)
        else:
            mask_k = offs_k < K
            x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0)
            w = tl.load(rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
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
    n, k = weight.shape
    config = config or pick_config(n, k)
    check(x.shape[1] == k, f"x has {x.shape[1]} columns, weight {k}")
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(cdiv(n, config.block_n),)](
        x, weight, out, n, k, weight.stride(0),
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, EVEN_K=k % config.block_k == 0,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out
