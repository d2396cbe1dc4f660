"""W4A16 matmul on AWQ-packed int4 weights: y [M, N] = x [M, K] @ W^T, W^T[k, n] = (q - z) * s.

Twin: reference_awq.awq_gemm (layout and packing order are described there).

Both kernels read each int32 of qweight once per program, unpack it in registers and never write a
dequantized weight to memory. A K block never straddles a quantization group (BLOCK_K divides G), so a
block's zero points and scales are one row of qzeros / scales:

    qweight tile [BLOCK_K, BLOCK_N / 8] --interleave x3--> [BLOCK_K, BLOCK_N] (each int32 repeated 8 times)
                 >> shift of column n % 8 (AWQ order) & 0xF  -->  q
    partial  = x_tile . (q - z)          exact small integers in the activation dtype, fp32 accumulation
    acc     += partial * s               the group's scale on the block's fp32 partial product

_gemm_kernel (M > GEMV_MAX_M): BLOCK_M x BLOCK_N tiles on tensor cores (tl.dot).
_dequant_kernel (prefill, M >= DEQUANT_MIN_M): W^T written once in x's dtype, then cuBLAS; the temporary
    weight costs less than the fused GEMM's dequantization of every tile for every BLOCK_M rows.
_gemv_kernel (decode, M <= GEMV_MAX_M): one row of x per program, products accumulated element-wise in fp32 and
    summed over K once at the end (no cross-thread reduction inside the loop); the M programs
    that read the same weight tile are neighbours on grid axis 0, so rows after the first hit L2. With few
    column blocks, K is split across grid axis 2 so enough programs stream the weight, and the fp32 partial
    sums are added afterwards (deterministic: no atomics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interndeploy.kernels import reference_awq
from interndeploy.kernels._triton import cdiv, check, num_sms, tl, triton

# at most this many rows take the GEMV-shaped path; from 2 rows on the tensor-core GEMM is faster (H100: qkv at
# M=2, 34.6 us against 32 us for 16 rows). On CUDA, layers with torch's int4 kernel use that for M <= 8.
GEMV_MAX_M = 1
# from this many rows on, dequantizing W once (_dequant_kernel) and multiplying on cuBLAS beats the fused
# GEMM: on an H100 at the 7B layers, M=128: 47 vs 68 us (qkv), M=4096: 290 vs 1085 us (scripts/gpu_awq_variants.py)
DEQUANT_MIN_M = 128


@triton.jit
def _unpack_awq(packed, BLOCK_N: tl.constexpr):
    """[..., BLOCK_N / 8] int32 -> [..., BLOCK_N] int32 in [0, 15], columns in logical order."""
    packed = tl.interleave(packed, packed)
    packed = tl.interleave(packed, packed)
    packed = tl.interleave(packed, packed)
    j = tl.arange(0, BLOCK_N) % 8
    shifts = ((j % 2) * 4 + j // 2) * 4  # nibble p = AWQ_ORDER.index(j) = (j % 2) * 4 + j // 2
    return (packed >> shifts) & 0xF


@triton.jit
def _gemm_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    qz_ptr,
    out_ptr,
    M,
    N,
    group_size,
    k_split,  # input rows per split (a multiple of BLOCK_K)
    K,
    stride_xm,
    stride_qk,
    stride_sg,
    stride_zg,
    stride_os,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask_p = offs_p < N // 8
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_lo = pid_s * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        q = tl.load(qw_ptr + offs_k[:, None] * stride_qk + offs_p[None, :], mask=mask_p[None, :], other=0)
        q = _unpack_awq(q, BLOCK_N)
        g = k0 // group_size
        z = _unpack_awq(tl.load(qz_ptr + g * stride_zg + offs_p, mask=mask_p, other=0), BLOCK_N)
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        w = (q - z[None, :]).to(tl.float32).to(x.dtype)  # via fp32: exact, and Triton's interpreter agrees
        acc += tl.dot(x, w) * s[None, :]
    out = out_ptr + pid_s * stride_os + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _gemv_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    qz_ptr,
    out_ptr,
    N,
    group_size,
    k_split,
    K,
    stride_xm,
    stride_qk,
    stride_sg,
    stride_zg,
    stride_os,
    stride_om,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    mask_n = offs_n < N
    mask_p = offs_p < N // 8
    # element-wise partial products; the reduction over K (across threads) happens once, after the loop
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    k_lo = pid_s * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + m * stride_xm + offs_k).to(tl.float32)
        q = tl.load(qw_ptr + offs_k[:, None] * stride_qk + offs_p[None, :], mask=mask_p[None, :], other=0)
        q = _unpack_awq(q, BLOCK_N)
        g = k0 // group_size
        z = _unpack_awq(tl.load(qz_ptr + g * stride_zg + offs_p, mask=mask_p, other=0), BLOCK_N)
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += x[:, None] * ((q - z[None, :]).to(tl.float32) * s[None, :])
    out = tl.sum(acc, axis=0)
    tl.store(out_ptr + pid_s * stride_os + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _dequant_kernel(
    qw_ptr,
    s_ptr,
    qz_ptr,
    out_ptr,
    K,
    N,
    group_size,
    stride_qk,
    stride_sg,
    stride_zg,
    stride_ok,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """W^T [K, N] = (q - z) * s, computed in fp32 like the twin, stored in out's dtype."""
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = tl.program_id(1) * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    mask_k = offs_k < K
    mask_p = offs_p < N // 8
    mask_n = offs_n < N
    g = offs_k // group_size
    q = tl.load(qw_ptr + offs_k[:, None] * stride_qk + offs_p[None, :], mask=mask_k[:, None] & mask_p[None, :], other=0)
    z = tl.load(qz_ptr + g[:, None] * stride_zg + offs_p[None, :], mask=mask_k[:, None] & mask_p[None, :], other=0)
    s = tl.load(s_ptr + g[:, None] * stride_sg + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
    w = (_unpack_awq(q, BLOCK_N) - _unpack_awq(z, BLOCK_N)).to(tl.float32) * s.to(tl.float32)
    tl.store(out_ptr + offs_k[:, None] * stride_ok + offs_n[None, :], w.to(out_ptr.dtype.element_ty),
             mask=mask_k[:, None] & mask_n[None, :])


def awq_dequantize(
    qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """W^T [K, N] in `dtype`; same contract as reference_awq.awq_dequantize."""
    k, n = qweight.shape[0], scales.shape[1]
    group = reference_awq.awq_group_size(qweight, scales)
    check(qweight.shape == (k, n // 8) and qzeros.shape == (k // group, n // 8), "AWQ shapes do not agree")
    check(qweight.stride(1) == qzeros.stride(1) == scales.stride(1) == 1, "AWQ tensors need unit column stride")
    out = torch.empty(k, n, dtype=dtype, device=qweight.device)
    block_k, block_n = 32, 128
    _dequant_kernel[(cdiv(k, block_k), cdiv(n, block_n))](
        qweight, scales, qzeros, out, k, n, group, qweight.stride(0), scales.stride(0), qzeros.stride(0),
        out.stride(0), BLOCK_K=block_k, BLOCK_N=block_n, num_warps=4,
    )
    return out


def _block_k(group_size: int, preferred: int) -> int:
    """The largest power of two <= preferred that divides the group (so a K block lies in one group)."""
    bk = preferred
    while bk > 16 and group_size % bk:
        bk //= 2
    return bk


def supports(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether the kernels take this call (else the caller uses the torch twin)."""
    if x.dtype not in (torch.float16, torch.bfloat16) or x.dim() != 2 or x.stride(-1) != 1:
        return False
    k, groups = qweight.shape[0], scales.shape[0]
    if groups == 0 or k % groups:
        return False
    return (k // groups) % 16 == 0


def _split_k(k_blocks: int, programs: int, device: torch.device) -> int:
    """How many K splits give about two waves of programs over the SMs (1 when there are enough already)."""
    target = 2 * num_sms(device)
    if programs >= target:
        return 1
    return max(1, min(k_blocks, cdiv(target, programs), 32))


@dataclass(frozen=True, slots=True)
class AwqLaunch:
    """How awq_gemm launches: which kernel, its tile, K splits (None: about two waves of programs)."""

    kind: str  # "gemv" (one row per program, CUDA cores) or "gemm" (tensor-core tiles)
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    splits: int | None = None


def default_launch(m: int, group: int) -> AwqLaunch:
    if m <= GEMV_MAX_M:
        # the sweep's best on an H100 at the 7B layers (scripts/gpu_gemv_sweep.py --awq-only): 128-column
        # tiles, 64-128 rows of K, 2 stages; 14 % under the earlier 256 x 32 tile
        return AwqLaunch("gemv", 1, 128, _block_k(group, 64), 4, 2)
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 256 else 128
    return AwqLaunch("gemm", block_m, 128, _block_k(group, 64), 4 if block_m == 64 else 8, 3)


def awq_gemm(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, launch: AwqLaunch | None = None
) -> torch.Tensor:
    """x [M, K] (fp16/bf16, unit column stride) -> [M, N] in x's dtype; same contract as the twin."""
    if not supports(x, qweight, scales):
        return reference_awq.awq_gemm(x, qweight, scales, qzeros)
    m, k = x.shape
    n = scales.shape[1]
    group = k // scales.shape[0]
    check(qweight.shape == (k, n // 8) and qweight.dtype == torch.int32, f"qweight {tuple(qweight.shape)} for K={k}")
    check(qzeros.shape == (scales.shape[0], n // 8) and qzeros.dtype == torch.int32, f"qzeros {tuple(qzeros.shape)}")
    check(qweight.stride(1) == qzeros.stride(1) == scales.stride(1) == 1, "AWQ tensors need unit column stride")
    check(x.device == qweight.device == scales.device == qzeros.device, "AWQ tensors on different devices")
    if m == 0:
        return x.new_empty(0, n)
    if launch is None and m >= DEQUANT_MIN_M:
        return x @ awq_dequantize(qweight, scales, qzeros, x.dtype)
    cfg = launch or default_launch(m, group)
    check(group % cfg.block_k == 0, f"BLOCK_K {cfg.block_k} must divide the group size {group}")
    grid_m = cdiv(m, cfg.block_m) if cfg.kind == "gemm" else m
    grid_n = cdiv(n, cfg.block_n)
    k_blocks = k // cfg.block_k
    splits = cfg.splits or _split_k(k_blocks, grid_m * grid_n, x.device)
    k_split = cdiv(k_blocks, min(splits, k_blocks)) * cfg.block_k
    splits = cdiv(k, k_split)
    if splits == 1:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
        stride_os = 0
    else:
        out = torch.empty(splits, m, n, dtype=torch.float32, device=x.device)
        stride_os = out.stride(0)
    stride_om = out.stride(-2)
    args = (x, qweight, scales, qzeros, out)
    strides = (x.stride(0), qweight.stride(0), scales.stride(0), qzeros.stride(0), stride_os, stride_om)
    if cfg.kind == "gemv":
        _gemv_kernel[(grid_m, grid_n, splits)](
            *args, n, group, k_split, k, *strides,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    else:
        _gemm_kernel[(grid_m, grid_n, splits)](
            *args, m, n, group, k_split, k, *strides,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return out if splits == 1 else out.sum(0).to(x.dtype)
