"""Write the new tokens' K/V into the paged cache through `slot_mapping` (twin: reference.store_kvcache).

    k, v      [T, Hkv, D]                       any token / head strides, last dim contiguous
    k_cache   [num_blocks, block_size, Hkv, D]  slot s -> k_cache[s // block_size, s % block_size]

With quant_policy 8 / 4 the caches are uint8 codes [.., D] / [.., D/2] and each token-head's (scale, zero)
goes to k_scale_zero / v_scale_zero [num_blocks, block_size, Hkv, 2] (kv_quant.quantize_store).

One program per token; a slot of -1 (a padding token of a CUDA graph batch) writes nothing. Unlike the
reference's boolean indexing, nothing here reads a device value on the host, so it is graph-capturable.
"""

import torch

from interndeploy.kernels._triton import check, next_power_of_2, pdl_launch, pdl_wait, tl, triton
from interndeploy.kernels.kv_quant import check_kv_caches, quantize_store
from interndeploy.kernels.reference_kv import SCALE_EPS


@triton.jit
def _store_kvcache_kernel(
    K,
    V,
    KCache,
    VCache,
    KScaleZero,
    VScaleZero,
    SlotMapping,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    stride_kzb,
    stride_kzs,
    stride_kzh,
    stride_vzb,
    stride_vzs,
    stride_vzh,
    block_size,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BITS: tl.constexpr,
    EPS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    t = tl.program_id(0)
    slot = tl.load(SlotMapping + t).to(tl.int64)
    if slot >= 0:
        blk = slot // block_size
        off = slot % block_size
        t64 = t.to(tl.int64)
        k_src = K + t64 * stride_kt
        v_src = V + t64 * stride_vt
        k_dst = KCache + blk * stride_kcb + off * stride_kcs
        v_dst = VCache + blk * stride_vcb + off * stride_vcs
        if BITS == 0:
            offs_h = tl.arange(0, BLOCK_H)[:, None]
            offs_d = tl.arange(0, BLOCK_D)[None, :]
            mask = (offs_h < NUM_HEADS) & (offs_d < HEAD_DIM)
            k = tl.load(k_src + offs_h * stride_kh + offs_d, mask=mask)
            v = tl.load(v_src + offs_h * stride_vh + offs_d, mask=mask)
            tl.store(k_dst + offs_h * stride_kch + offs_d, k.to(KCache.dtype.element_ty), mask=mask)
            tl.store(v_dst + offs_h * stride_vch + offs_d, v.to(VCache.dtype.element_ty), mask=mask)
        else:
            offs_h = tl.arange(0, BLOCK_H)
            mask_h = offs_h < NUM_HEADS
            k_sz = KScaleZero + blk * stride_kzb + off * stride_kzs
            v_sz = VScaleZero + blk * stride_vzb + off * stride_vzs
            quantize_store(k_src, stride_kh, k_dst, stride_kch, k_sz, stride_kzh, offs_h, mask_h,
                           HEAD_DIM, BLOCK_D, BITS, EPS)
            quantize_store(v_src, stride_vh, v_dst, stride_vch, v_sz, stride_vzh, offs_h, mask_h,
                           HEAD_DIM, BLOCK_D, BITS, EPS)


def store_kvcache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
) -> None:
    """Write k/v [T, Hkv, D] into the slots `slot_mapping` [T] of the caches (quantized for uint8 caches, with
    their (scale, zero) in k_scale_zero / v_scale_zero); slot -1 is skipped."""
    check(k.dim() == 3 and v.shape == k.shape, f"k/v must be [T, Hkv, D] alike, got {tuple(k.shape)}, {tuple(v.shape)}")
    num_tokens, num_heads, head_dim = k.shape
    bits = check_kv_caches(head_dim, k_cache, v_cache, k_scale_zero, v_scale_zero)
    check(
        k_cache.shape[2] == num_heads,
        f"k/v heads x dim {(num_heads, head_dim)} do not match the cache's {tuple(k_cache.shape[2:])}",
    )
    check(
        slot_mapping.shape == (num_tokens,) and slot_mapping.dtype in (torch.int32, torch.int64),
        f"slot_mapping must be [T={num_tokens}] int32/int64, got {tuple(slot_mapping.shape)} {slot_mapping.dtype}",
    )
    for name, t in (("k", k), ("v", v)):
        check(t.stride(-1) == 1, f"{name} must be contiguous in its last dim")
        check(t.device == k_cache.device, f"{name} is on {t.device}, the cache on {k_cache.device}")
    check(slot_mapping.device == k_cache.device, "slot_mapping must be on the cache's device")
    if num_tokens == 0:
        return
    if bits == 0:  # never read with BITS 0: any pointer and strides will do
        k_scale_zero = v_scale_zero = k_cache
    block_h = next_power_of_2(num_heads)
    block_d = next_power_of_2(head_dim // 2 if bits == 4 else head_dim)
    _store_kvcache_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        k_scale_zero,
        v_scale_zero,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        k_scale_zero.stride(0),
        k_scale_zero.stride(1),
        k_scale_zero.stride(2),
        v_scale_zero.stride(0),
        v_scale_zero.stride(1),
        v_scale_zero.stride(2),
        k_cache.shape[1],
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        BITS=bits,
        EPS=SCALE_EPS,
        num_warps=4 if block_h * block_d >= 2048 else 1,
        **pdl_launch(k.device),
    )
