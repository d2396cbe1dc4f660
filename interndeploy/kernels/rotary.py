"""Rotate-half RoPE applied to q and k in one launch (twin: reference.apply_rotary).

    q [T, Hq, D], k [T, Hkv, D]   any token / head strides (views of the packed qkv output are fine)
    cos, sin [T, D / 2]           per token, already scaled (dynamic NTK included) by RotaryEmbedding
    x = [x1 | x2]  ->  [x1 cos - x2 sin | x2 cos + x1 sin], in fp32, rounded to x's dtype

One program per token. In place (out = input) is safe: each program reads its token's halves before
writing them, and no other program touches that token.
"""

import torch

from interndeploy.kernels._triton import check, next_power_of_2, pdl_launch, pdl_wait, tl, triton


@triton.jit
def _rotate_heads(
    X,
    Out,
    stride_xh,
    stride_oh,
    c,
    s,
    offs_half,
    mask_half,
    NUM_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    offs_h = tl.arange(0, BLOCK_H)[:, None]
    mask = (offs_h < NUM_HEADS) & mask_half[None, :]
    x_ptr = X + offs_h * stride_xh + offs_half[None, :]
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    o_ptr = Out + offs_h * stride_oh + offs_half[None, :]
    tl.store(o_ptr, (x1 * c - x2 * s).to(Out.dtype.element_ty), mask=mask)
    tl.store(o_ptr + HALF, (x2 * c + x1 * s).to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    Q,
    K,
    QOut,
    KOut,
    Cos,
    Sin,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_qot,
    stride_qoh,
    stride_kot,
    stride_koh,
    stride_ct,
    stride_st,
    NUM_Q_HEADS: tl.constexpr,
    NUM_K_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    offs_half = tl.arange(0, BLOCK_HALF)
    mask_half = offs_half < HALF
    c = tl.load(Cos + t * stride_ct + offs_half, mask=mask_half, other=0.0).to(tl.float32)[None, :]
    s = tl.load(Sin + t * stride_st + offs_half, mask=mask_half, other=0.0).to(tl.float32)[None, :]
    q_in, q_out = Q + t * stride_qt, QOut + t * stride_qot
    _rotate_heads(q_in, q_out, stride_qh, stride_qoh, c, s, offs_half, mask_half, NUM_Q_HEADS, HALF, BLOCK_HQ)
    k_in, k_out = K + t * stride_kt, KOut + t * stride_kot
    _rotate_heads(k_in, k_out, stride_kh, stride_koh, c, s, offs_half, mask_half, NUM_K_HEADS, HALF, BLOCK_HK)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated (q, k); new contiguous tensors, or q and k themselves when `inplace`."""
    check(q.dim() == 3 and k.dim() == 3, f"q/k must be [T, H, D], got {tuple(q.shape)}, {tuple(k.shape)}")
    num_tokens, num_q_heads, head_dim = q.shape
    check(k.shape[0] == num_tokens and k.shape[2] == head_dim, f"k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    check(head_dim % 2 == 0, f"head_dim {head_dim} must be even")
    half = head_dim // 2
    for name, t in (("cos", cos), ("sin", sin)):
        check(t.shape == (num_tokens, half), f"{name} must be [T={num_tokens}, D/2={half}], got {tuple(t.shape)}")
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check(t.stride(-1) == 1, f"{name} must be contiguous in its last dim")
        check(t.device == q.device, f"{name} is on {t.device}, q on {q.device}")
    if inplace:
        q_out, k_out = q, k
    else:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    block_hq, block_hk = next_power_of_2(num_q_heads), next_power_of_2(k.shape[1])
    block_half = next_power_of_2(half)
    _rotary_kernel[(num_tokens,)](
        q,
        k,
        q_out,
        k_out,
        cos,
        sin,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        q_out.stride(0),
        q_out.stride(1),
        k_out.stride(0),
        k_out.stride(1),
        cos.stride(0),
        sin.stride(0),
        NUM_Q_HEADS=num_q_heads,
        NUM_K_HEADS=k.shape[1],
        HALF=half,
        BLOCK_HQ=block_hq,
        BLOCK_HK=block_hk,
        BLOCK_HALF=block_half,
        num_warps=4 if block_hq * block_half >= 1024 else 1,
        **pdl_launch(q.device),
    )
    return q_out, k_out
