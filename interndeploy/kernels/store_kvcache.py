"""Write the new tokens' K/V into the paged cache through `slot_mapping` (twin: reference.store_kvcache).

    k, v      [T, Hkv, D]                       any token / head strides, last dim contiguous
    k_cache   [num_blocks, block_size, Hkv, D]  slot s -> k_cache[s // block_size, s % block_size]

One program per token; a slot of -1 (a padding token of a CUDA graph batch) writes nothing. Unlike the
reference's boolean indexing, nothing here reads a device value on the host, so it is graph-capturable.
"""

import torch

from interndeploy.kernels._triton import check, next_power_of_2, tl, triton


@triton.jit
def _store_kvcache_kernel(
    K,
    V,
    KCache,
    VCache,
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
    block_size,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(SlotMapping + t).to(tl.int64)
    if slot >= 0:
        blk = slot // block_size
        off = slot % block_size
        offs_h = tl.arange(0, BLOCK_H)[:, None]
        offs_d = tl.arange(0, BLOCK_D)[None, :]
        mask = (offs_h < NUM_HEADS) & (offs_d < HEAD_DIM)
        t64 = t.to(tl.int64)
        k = tl.load(K + t64 * stride_kt + offs_h * stride_kh + offs_d, mask=mask)
        v = tl.load(V + t64 * stride_vt + offs_h * stride_vh + offs_d, mask=mask)
        k_dst = KCache + blk * stride_kcb + off * stride_kcs + offs_h * stride_kch + offs_d
        v_dst = VCache + blk * stride_vcb + off * stride_vcs + offs_h * stride_vch + offs_d
        tl.store(k_dst, k.to(KCache.dtype.element_ty), mask=mask)
        tl.store(v_dst, v.to(VCache.dtype.element_ty), mask=mask)


def store_kvcache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write k/v [T, Hkv, D] into the slots `slot_mapping` [T] of the caches; slot -1 is skipped."""
    check(k.dim() == 3 and v.shape == k.shape, f"k/v must be [T, Hkv, D] alike, got {tuple(k.shape)}, {tuple(v.shape)}")
    check(k_cache.dim() == 4 and v_cache.shape == k_cache.shape, "k_cache/v_cache must be [blocks, block_size, Hkv, D]")
    num_tokens, num_heads, head_dim = k.shape
    check(
        tuple(k_cache.shape[2:]) == (num_heads, head_dim),
        f"k/v heads x dim {(num_heads, head_dim)} do not match the cache's {tuple(k_cache.shape[2:])}",
    )
    check(
        slot_mapping.shape == (num_tokens,) and slot_mapping.dtype in (torch.int32, torch.int64),
        f"slot_mapping must be [T={num_tokens}] int32/int64, got {tuple(slot_mapping.shape)} {slot_mapping.dtype}",
    )
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check(t.stride(-1) == 1, f"{name} must be contiguous in its last dim")
        check(t.device == k_cache.device, f"{name} is on {t.device}, the cache on {k_cache.device}")
    check(slot_mapping.device == k_cache.device, "slot_mapping must be on the cache's device")
    if num_tokens == 0:
        return
    block_h, block_d = next_power_of_2(num_heads), next_power_of_2(head_dim)
    _store_kvcache_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
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
        k_cache.shape[1],
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=4 if block_h * block_d >= 2048 else 1,
    )
