"""Paged decode attention: one query token per sequence, GQA-aware, split-K (flash-decoding).

Twin: reference.paged_attention with every query_len == 1.

    q        [B, Hq, D]                          token b is the last token of sequence b
    k_cache  [num_blocks, block_size, Hkv, D]    token i of seq b in block block_tables[b, i // block_size]
    out      [B, Hq, D]

Grid (B, Hkv, S). Program (b, g, s) holds the GROUP = Hq / Hkv query heads of kv head g as one
[GROUP (padded to 16), D] tile, so each K/V row is loaded once for the whole group, and walks its
share of the context:

    chunk(b) = round_up(ceil(seq_len[b] / S), BLOCK_N)
    split s  = tokens [s * chunk, min((s + 1) * chunk, seq_len))        (empty for short sequences)

Each split writes its normalised partial output and log-sum-exp (base 2); a second kernel combines
the non-empty splits. With S == 1 the first kernel writes the output directly.

With an int8 / int4 cache (quant_policy 8 / 4: uint8 codes plus k_scale_zero / v_scale_zero) each K/V
tile is dequantized as it is loaded (kv_quant.load_kv_tile); everything after is the same.

CUDA-graph capturable: S and the grid come from shapes only (B, Hkv, block_tables.shape[1]); seq_lens
is read on the device, never on the host. A sequence of seq_len 0 (graph padding) gets zeros.
"""

import torch

from interndeploy.kernels._triton import cdiv, check, next_power_of_2, num_sms, pdl_launch, pdl_wait, tl, triton
from interndeploy.kernels.kv_quant import check_kv_caches, load_kv_rows, load_kv_tile

_LOG2E = 1.4426950408889634
MIN_TOKENS_PER_SPLIT = 128  # a split shorter than this costs more in the reduce than it saves
MAX_SPLITS = 64


@triton.jit
def _decode_split_kernel(
    Q,
    KCache,
    VCache,
    KScaleZero,
    VScaleZero,
    BlockTables,
    SeqLens,
    Out,
    MidO,
    MidLse,
    scale_log2,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_kzb,
    stride_kzs,
    stride_kzh,
    stride_vzb,
    stride_vzs,
    stride_vzh,
    stride_bt,
    stride_ob,
    stride_oh,
    stride_mb,
    stride_mh,
    stride_ms,
    stride_lb,
    stride_lh,
    block_size,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    IS_FP32: tl.constexpr,
    BITS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    chunk = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_h
    b64 = b.to(tl.int64)
    q = tl.load(
        Q + b64 * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_h[:, None] & mask_d[None, :],
        other=0.0,
    )
    table = BlockTables + b64 * stride_bt
    k_base = KCache + kv_head * stride_kh
    v_base = VCache + kv_head * stride_vh
    kz_base = KScaleZero + kv_head * stride_kzh
    vz_base = VScaleZero + kv_head * stride_vzh

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        blk = tl.load(table + offs_n // block_size, mask=mask_n, other=0).to(tl.int64)
        in_blk = offs_n % block_size
        k = load_kv_tile(k_base, kz_base, blk, in_blk, mask_n, offs_d, mask_d, stride_kb, stride_ks,
                         stride_kzb, stride_kzs, HEAD_DIM, BITS).to(q.dtype)
        v = load_kv_tile(v_base, vz_base, blk, in_blk, mask_n, offs_d, mask_d, stride_vb, stride_vs,
                         stride_vzb, stride_vzs, HEAD_DIM, BITS).to(q.dtype)
        if IS_FP32:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(mask_n[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IS_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    acc = acc / l_safe[:, None]
    mask_hd = mask_h[:, None] & mask_d[None, :]
    if NUM_SPLITS == 1:
        o_ptr = Out + b64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptr, acc.to(Out.dtype.element_ty), mask=mask_hd)
    else:
        # empty splits store garbage here; the reduce never reads them
        mid = MidO + b64 * stride_mb + heads[:, None] * stride_mh + split * stride_ms + offs_d[None, :]
        tl.store(mid, acc, mask=mask_hd)
        tl.store(MidLse + b64 * stride_lb + heads * stride_lh + split, m_i + tl.log2(l_safe), mask=mask_h)


@triton.jit
def _decode_mha_kernel(
    Q,
    KCache,
    VCache,
    KScaleZero,
    VScaleZero,
    BlockTables,
    SeqLens,
    Out,
    MidO,
    MidLse,
    scale_log2,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_kzb,
    stride_kzs,
    stride_kzh,
    stride_vzb,
    stride_vzs,
    stride_vzh,
    stride_bt,
    stride_ob,
    stride_oh,
    stride_mb,
    stride_mh,
    stride_ms,
    stride_lb,
    stride_lh,
    block_size,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BITS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One query head per kv head (MHA): products on the CUDA cores, no tensor-core tile padded from 1 row to 16.
    A quantized cache is never dequantized element-wise; its per-token scale and zero apply to the row sums:

        q . (c * s + z)        = s * (q . c) + z * sum(q)
        sum_n p_n (c_n s_n + z_n) = sum_n (p_n s_n) c_n + sum_n p_n z_n
    """
    pdl_wait(USE_PDL)
    b = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    chunk = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    b64 = b.to(tl.int64)
    q = tl.load(Q + b64 * stride_qb + head * stride_qh + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    q_sum = tl.sum(q, 0)
    table = BlockTables + b64 * stride_bt
    k_base = KCache + head * stride_kh
    v_base = VCache + head * stride_vh
    kz_base = KScaleZero + head * stride_kzh
    vz_base = VScaleZero + head * stride_vzh

    m_i = float("-inf")
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        blk = tl.load(table + offs_n // block_size, mask=mask_n, other=0).to(tl.int64)
        in_blk = offs_n % block_size
        k = load_kv_rows(k_base, blk, in_blk, mask_n, offs_d, mask_d, stride_kb, stride_ks, HEAD_DIM, BITS)
        s = tl.sum(k * q[None, :], 1)
        if BITS != 0:
            kz = kz_base + blk * stride_kzb + in_blk * stride_kzs
            s = s * tl.load(kz, mask=mask_n, other=0.0).to(tl.float32) + q_sum * tl.load(
                kz + 1, mask=mask_n, other=0.0).to(tl.float32)
        s = tl.where(mask_n, s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        v = load_kv_rows(v_base, blk, in_blk, mask_n, offs_d, mask_d, stride_vb, stride_vs, HEAD_DIM, BITS)
        if BITS != 0:
            vz = vz_base + blk * stride_vzb + in_blk * stride_vzs
            p_scaled = p * tl.load(vz, mask=mask_n, other=0.0).to(tl.float32)
            v_zero = tl.load(vz + 1, mask=mask_n, other=0.0).to(tl.float32)
            pv = tl.sum(p_scaled[:, None] * v, 0) + tl.sum(p * v_zero, 0)
        else:
            pv = tl.sum(p[:, None] * v, 0)
        acc = acc * alpha + pv
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    acc = acc / l_safe
    if NUM_SPLITS == 1:
        tl.store(Out + b64 * stride_ob + head * stride_oh + offs_d, acc.to(Out.dtype.element_ty), mask=mask_d)
    else:
        mid = MidO + b64 * stride_mb + head * stride_mh + split * stride_ms + offs_d
        tl.store(mid, acc, mask=mask_d)
        tl.store(MidLse + b64 * stride_lb + head * stride_lh + split, m_i + tl.log2(l_safe))


@triton.jit
def _decode_reduce_kernel(
    MidO,
    MidLse,
    SeqLens,
    Out,
    stride_mb,
    stride_mh,
    stride_ms,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    chunk = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    num_valid = tl.cdiv(seq_len, tl.maximum(chunk, 1))  # the non-empty splits, as the split kernel cut them
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < num_valid
    mask_d = offs_d < HEAD_DIM
    b64 = b.to(tl.int64)
    lse = tl.load(MidLse + b64 * stride_lb + h * stride_lh + offs_s, mask=mask_s, other=float("-inf"))
    m = tl.where(num_valid > 0, tl.max(lse, 0), 0.0)
    w = tl.exp2(lse - m)
    o = tl.load(
        MidO + b64 * stride_mb + h * stride_mh + offs_s[:, None] * stride_ms + offs_d[None, :],
        mask=mask_s[:, None] & mask_d[None, :],
        other=0.0,
    )
    acc = tl.sum(o * w[:, None], 0)
    denom = tl.sum(w, 0)
    acc = acc / tl.where(denom > 0, denom, 1.0)
    tl.store(Out + b64 * stride_ob + h * stride_oh + offs_d, acc.to(Out.dtype.element_ty), mask=mask_d)


def pick_num_splits(num_programs: int, max_tokens: int, device: torch.device) -> int:
    """Splits per sequence so that about two waves of programs fill the GPU, each split >= 128 tokens."""
    want = cdiv(2 * num_sms(device), max(num_programs, 1))
    return max(1, min(want, cdiv(max_tokens, MIN_TOKENS_PER_SPLIT), MAX_SPLITS))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
    cuda_cores: bool | None = None,
) -> torch.Tensor:
    """Attention of q [B, Hq, D] (one token per sequence) over each sequence's seq_lens[b] cached tokens.

    cuda_cores: the MHA kernel (products on CUDA cores, scales folded into row sums); the default for an
    int8 / int4 cache with Hq == Hkv, where the tensor-core tile is 1/16 full and dequantizing it bounds the time.

    A uint8 cache holds int8 / int4 codes (by its last dim, D or D/2) and needs k_scale_zero / v_scale_zero."""
    check(q.dim() == 3, f"q must be [B, Hq, D], got {tuple(q.shape)}")
    batch, num_heads, head_dim = q.shape
    bits = check_kv_caches(head_dim, k_cache, v_cache, k_scale_zero, v_scale_zero)
    _, block_size, num_kv_heads, _ = k_cache.shape
    check(num_heads % num_kv_heads == 0, f"Hq={num_heads} must be a multiple of Hkv={num_kv_heads}")
    check(
        (bits or q.dtype == k_cache.dtype) and q.dtype in (torch.float16, torch.bfloat16, torch.float32),
        f"q/k_cache/v_cache must share one of fp16/bf16/fp32, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}",
    )
    check(
        block_tables.dim() == 2 and block_tables.shape[0] == batch and block_tables.dtype == torch.int32,
        f"block_tables must be [B={batch}, max_blocks] int32, got {tuple(block_tables.shape)} {block_tables.dtype}",
    )
    check(
        seq_lens.shape == (batch,) and seq_lens.dtype in (torch.int32, torch.int64),
        f"seq_lens must be [B={batch}] int32/int64, got {tuple(seq_lens.shape)} {seq_lens.dtype}",
    )
    check(q.stride(-1) == 1, "q must be contiguous in its last dim")
    check(block_tables.stride(1) == 1, "block_tables must be contiguous in its last dim")
    for t in (k_cache, v_cache, block_tables, seq_lens):
        check(t.device == q.device, f"all inputs must be on {q.device}, one is on {t.device}")
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    check(out.shape == q.shape and out.dtype == q.dtype and out.stride(-1) == 1, "out must be like q")
    if batch == 0:
        return out
    if bits == 0:  # never read with BITS 0: any pointer and strides will do
        k_scale_zero = v_scale_zero = k_cache

    group = num_heads // num_kv_heads
    block_h = max(16, next_power_of_2(group))
    block_d = max(16, next_power_of_2(head_dim))
    max_tokens = block_tables.shape[1] * block_size
    splits = num_splits or pick_num_splits(batch * num_kv_heads, max_tokens, q.device)
    if cuda_cores is None:
        cuda_cores = group == 1 and bits != 0
    check(not cuda_cores or group == 1, f"the CUDA-core kernel is for MHA (Hq == Hkv), got group {group}")
    if cuda_cores:
        # H100 sweep (tests/kernels/bench_decode_attention.py --kv-heads 32 --sweep): one warp per 32-token
        # tile once there are >= 4 programs per SM (batch 32-128 at 4k tokens: 1.5-1.8x faster than the bf16 cache);
        # wide tiles when few programs must stream a long context (batch 1)
        many = batch * num_kv_heads * splits >= 4 * num_sms(q.device)
        block_n, num_warps = block_n or (32 if many else 128), num_warps or (1 if many else 4)
    block_n = block_n or (64 if block_d <= 128 else 32)
    num_warps = num_warps or 4
    if splits > 1:
        mid_o = torch.empty((batch, num_heads, splits, head_dim), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((batch, num_heads, splits), dtype=torch.float32, device=q.device)
    else:  # unused by the kernel; any fp32 tensor will do for the pointers
        mid_o = mid_lse = torch.empty((1, 1, 1, 1), dtype=torch.float32, device=q.device)
    consts = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=block_n, NUM_SPLITS=splits, BITS=bits)
    if cuda_cores:
        kernel = _decode_mha_kernel
    else:
        kernel = _decode_split_kernel
        consts.update(GROUP=group, BLOCK_H=block_h, IS_FP32=q.dtype == torch.float32)
    kernel[(batch, num_kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        k_scale_zero,
        v_scale_zero,
        block_tables,
        seq_lens,
        out,
        mid_o,
        mid_lse,
        scale * _LOG2E,
        q.stride(0),
        q.stride(1),
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
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        mid_o.stride(0),
        mid_o.stride(1),
        mid_o.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        block_size,
        **consts,
        num_warps=num_warps,
        num_stages=num_stages,
        **pdl_launch(q.device),
    )
    if splits > 1:
        _decode_reduce_kernel[(batch, num_heads)](
            mid_o,
            mid_lse,
            seq_lens,
            out,
            mid_o.stride(0),
            mid_o.stride(1),
            mid_o.stride(2),
            mid_lse.stride(0),
            mid_lse.stride(1),
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_N=block_n,
            NUM_SPLITS=splits,
            BLOCK_S=max(2, next_power_of_2(splits)),
            num_warps=4,
            **pdl_launch(q.device),
        )
    return out
