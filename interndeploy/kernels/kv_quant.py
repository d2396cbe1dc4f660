"""Triton pieces of the int8 / int4 KV cache (quant_policy 8 / 4), shared by the store and attention kernels.

Scheme and layout: `kernels/reference_kv.py`, the torch twin. `quantize_store` is the store kernel's
quantization of one token's [Hkv, D] rows; `load_kv_tile` is how the tensor-core attention kernels read a K or V
tile of one kv head, whatever the cache holds (`load_kv_rows`, its first half, gives the codes alone, for
kernels that apply scale and zero to row sums instead):

    BITS 0   values as stored (the compute dtype)
    BITS 8   uint8 codes [N, D]                          -> codes * scale + zero, fp32
    BITS 4   uint8 [N, D/2]; element d = byte d % (D/2) >> 4 * (d // (D/2)) & 15  (each byte read twice,
             the second time from L1) -> codes * scale + zero, fp32

`check_kv_caches` is the launchers' shape / dtype check of a (possibly quantized) cache pair.
"""

from __future__ import annotations

import torch

from interndeploy.kernels._triton import check, tl, triton
from interndeploy.kernels.reference_kv import kv_cache_bits


@triton.jit
def _scale_zero(lo, hi, ScaleZero, QMAX: tl.constexpr, EPS: tl.constexpr):
    """Per-row min lo / max hi [H] -> (scale, zero) [H] fp32, already rounded to ScaleZero's dtype."""
    dtype = ScaleZero.dtype.element_ty
    scale = tl.maximum((hi - lo) * (1.0 / QMAX), EPS).to(dtype).to(tl.float32)
    return scale, lo.to(dtype).to(tl.float32)


@triton.jit
def _codes(x, scale, zero, QMAX: tl.constexpr):
    """Rows x [H, N] fp32 -> codes int32 [H, N]; div_rn is the IEEE division torch does, so the codes equal
    the reference's bit for bit."""
    codes = tl.floor(tl.math.div_rn(x - zero[:, None], scale[:, None]) + 0.5)
    return tl.minimum(tl.maximum(codes, 0.0), QMAX).to(tl.int32)


@triton.jit
def quantize_store(
    Src,
    stride_sh,
    Dst,
    stride_dh,
    ScaleZero,
    stride_zh,
    offs_h,
    mask_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BITS: tl.constexpr,
    EPS: tl.constexpr,
):
    """Quantize one token's rows Src[h, :HEAD_DIM] (h in offs_h where mask_h) into the codes at Dst[h, :] and
    (scale, zero) at ScaleZero[h, 0:2]. BLOCK_D covers HEAD_DIM (int8) or HEAD_DIM / 2 (int4); EPS is
    reference_kv.SCALE_EPS."""
    offs_d = tl.arange(0, BLOCK_D)
    if BITS == 8:
        mask = mask_h[:, None] & (offs_d < HEAD_DIM)[None, :]
        x = tl.load(Src + offs_h[:, None] * stride_sh + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        lo = tl.min(tl.where(mask, x, float("inf")), 1)
        hi = tl.max(tl.where(mask, x, float("-inf")), 1)
        scale, zero = _scale_zero(lo, hi, ScaleZero, 255.0, EPS)
        codes = _codes(x, scale, zero, 255.0)
    else:
        half = HEAD_DIM // 2
        mask = mask_h[:, None] & (offs_d < half)[None, :]
        src = Src + offs_h[:, None] * stride_sh + offs_d[None, :]
        x_lo = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x_hi = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
        lo = tl.minimum(tl.min(tl.where(mask, x_lo, float("inf")), 1), tl.min(tl.where(mask, x_hi, float("inf")), 1))
        hi = tl.maximum(tl.max(tl.where(mask, x_lo, float("-inf")), 1), tl.max(tl.where(mask, x_hi, float("-inf")), 1))
        scale, zero = _scale_zero(lo, hi, ScaleZero, 15.0, EPS)
        codes = _codes(x_lo, scale, zero, 15.0) | (_codes(x_hi, scale, zero, 15.0) << 4)
    tl.store(Dst + offs_h[:, None] * stride_dh + offs_d[None, :], codes.to(tl.uint8), mask=mask)
    sz = ScaleZero + offs_h * stride_zh
    tl.store(sz, scale.to(ScaleZero.dtype.element_ty), mask=mask_h)
    tl.store(sz + 1, zero.to(ScaleZero.dtype.element_ty), mask=mask_h)


@triton.jit
def load_kv_rows(
    Cache,
    blk,
    in_blk,
    mask_n,
    offs_d,
    mask_d,
    stride_b,
    stride_s,
    HEAD_DIM: tl.constexpr,
    BITS: tl.constexpr,
):
    """The [N, BLOCK_D] tile of rows (blk[n], in_blk[n]) of one kv head in fp32: the values (BITS 0) or the raw
    int8 / int4 codes. Codes become fp32 through the exponent trick (bits | 0x4B000000 is 2^23 + code as a
    float): two full-rate ALU ops instead of the quarter-rate int-to-float conversion. Rows off mask_n read 0."""
    rows = blk[:, None] * stride_b + in_blk[:, None] * stride_s
    mask = mask_n[:, None] & mask_d[None, :]
    if BITS == 0:
        return tl.load(Cache + rows + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    if BITS == 8:
        codes = tl.load(Cache + rows + offs_d[None, :], mask=mask, other=0).to(tl.int32)
    else:
        half = HEAD_DIM // 2
        packed = tl.load(Cache + rows + (offs_d % half)[None, :], mask=mask, other=0).to(tl.int32)
        codes = (packed >> ((offs_d // half) * 4)[None, :]) & 15
    return (codes | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def load_kv_tile(
    Cache,
    ScaleZero,
    blk,
    in_blk,
    mask_n,
    offs_d,
    mask_d,
    stride_b,
    stride_s,
    stride_zb,
    stride_zs,
    HEAD_DIM: tl.constexpr,
    BITS: tl.constexpr,
):
    """The [N, BLOCK_D] tile of rows (blk[n], in_blk[n]) of one kv head (Cache / ScaleZero point at its head):
    as stored for BITS 0, dequantized to fp32 otherwise. Rows off mask_n read 0; columns off mask_d are junk
    (0, or the row's zero point) that q's zero columns and the masked store of the output ignore."""
    if BITS == 0:
        rows = blk[:, None] * stride_b + in_blk[:, None] * stride_s
        x = tl.load(Cache + rows + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    else:
        codes = load_kv_rows(Cache, blk, in_blk, mask_n, offs_d, mask_d, stride_b, stride_s, HEAD_DIM, BITS)
        sz = ScaleZero + blk * stride_zb + in_blk * stride_zs
        scale = tl.load(sz, mask=mask_n, other=0.0).to(tl.float32)
        zero = tl.load(sz + 1, mask=mask_n, other=0.0).to(tl.float32)
        x = codes * scale[:, None] + zero[:, None]
    return x


def check_kv_caches(
    head_dim: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale_zero: torch.Tensor | None,
    v_scale_zero: torch.Tensor | None,
) -> int:
    """A launcher's check of one layer's caches for q / k / v of head_dim; returns their bits (0, 8 or 4)."""
    check(k_cache.dim() == 4 and v_cache.shape == k_cache.shape, "k_cache/v_cache must be [blocks, block_size, Hkv, D]")
    check(v_cache.dtype == k_cache.dtype, f"k_cache is {k_cache.dtype}, v_cache {v_cache.dtype}")
    try:
        bits = kv_cache_bits(k_cache, head_dim)
    except ValueError as e:
        raise ValueError(f"head_dim {head_dim} and the caches {tuple(k_cache.shape)} {k_cache.dtype} "
                         f"do not match the cache layout: {e}") from None
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check(t.stride(-1) == 1, f"{name} must be contiguous in its last dim")
    if bits == 0:
        return 0
    want = (*k_cache.shape[:3], 2)
    for name, t in (("k_scale_zero", k_scale_zero), ("v_scale_zero", v_scale_zero)):
        check(t is not None, f"an int{bits} KV cache needs {name} {want}")
        check(tuple(t.shape) == want and t.stride(-1) == 1, f"{name} must be {want}, last dim contiguous, "
                                                            f"got {tuple(t.shape)} strides {t.stride()}")
        check(t.dtype in (torch.float16, torch.float32), f"{name} must be fp16 or fp32, got {t.dtype}")
        check(t.device == k_cache.device, f"{name} is on {t.device}, the cache on {k_cache.device}")
    return bits
