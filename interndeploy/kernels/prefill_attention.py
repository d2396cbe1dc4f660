"""Paged prefill / extend attention: causal varlen attention whose K/V all come from the paged cache.

Twin: reference.paged_attention.

    q        [T, Hq, D]      query tokens of all sequences, flattened: seq b owns rows
                              query_start_loc[b] .. query_start_loc[b + 1]
    k_cache  [num_blocks, block_size, Hkv, D]   (the new tokens' K/V were stored just before)

Sequence b has q_len new tokens at the end of its seq_len tokens, so query row j sits at position
prefix + j (prefix = seq_len - q_len: cached prompt prefix or earlier chunks) and sees keys 0 ..= prefix + j:

    keys   0 ............ prefix ........ seq_len
    q blk  [=== no mask: all visible ===][ causal diagonal ]

Grid (Hq, q-blocks, B), heads fastest, so the GROUP heads that share a kv head run side by side and
read its K/V from L2. Each program is a flash-attention tile: BLOCK_M query rows, online softmax
over BLOCK_N keys at a time in fp32, the causal mask only on the blocks that cross the diagonal.
A decode sequence (q_len 1) is a one-row extend, so mixed prefill + decode batches work too.
An int8 / int4 cache (uint8 codes plus k_scale_zero / v_scale_zero) is dequantized tile by tile as it
is loaded (kv_quant.load_kv_tile).
"""

import torch

from interndeploy.kernels._triton import cdiv, check, next_power_of_2, tl, triton
from interndeploy.kernels.kv_quant import check_kv_caches, load_kv_tile

_LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    kz_base,
    vz_base,
    table,
    pos_m,
    lo,
    hi,
    block_size,
    stride_kb,
    stride_ks,
    stride_vb,
    stride_vs,
    stride_kzb,
    stride_kzs,
    stride_vzb,
    stride_vzs,
    scale_log2,
    offs_d,
    mask_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_FP32: tl.constexpr,
    BITS: tl.constexpr,
):
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
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
        if CAUSAL:
            visible = mask_n[None, :] & (offs_n[None, :] <= pos_m[:, None])
        else:
            visible = mask_n[None, :]
        s = tl.where(visible, s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IS_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _prefill_kernel(
    Q,
    KCache,
    VCache,
    KScaleZero,
    VScaleZero,
    QueryStartLoc,
    SeqLens,
    BlockTables,
    Out,
    scale_log2,
    stride_qt,
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
    stride_ot,
    stride_oh,
    block_size,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_FP32: tl.constexpr,
    BITS: tl.constexpr,
):
    head = tl.program_id(0)
    q_blk = tl.program_id(1)
    b = tl.program_id(2)
    q_start = tl.load(QueryStartLoc + b).to(tl.int32)
    q_len = tl.load(QueryStartLoc + b + 1).to(tl.int32) - q_start
    if q_blk * BLOCK_M < q_len:
        seq_len = tl.load(SeqLens + b).to(tl.int32)
        prefix = seq_len - q_len
        offs_m = q_blk * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < q_len
        mask_d = offs_d < HEAD_DIM
        rows = (q_start + offs_m).to(tl.int64)
        q = tl.load(
            Q + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
            mask=mask_m[:, None] & mask_d[None, :],
            other=0.0,
        )
        pos_m = prefix + offs_m
        kv_head = head // GROUP
        table = BlockTables + b.to(tl.int64) * stride_bt
        k_base = KCache + kv_head * stride_kh
        v_base = VCache + kv_head * stride_vh
        kz_base = KScaleZero + kv_head * stride_kzh
        vz_base = VScaleZero + kv_head * stride_vzh

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # keys before the block's first query position are visible to every row: no mask
        first_pos = prefix + q_blk * BLOCK_M
        full_end = (first_pos // BLOCK_N) * BLOCK_N
        kv_end = tl.minimum(seq_len, first_pos + BLOCK_M)
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, k_base, v_base, kz_base, vz_base, table, pos_m, 0, full_end, block_size,
            stride_kb, stride_ks, stride_vb, stride_vs, stride_kzb, stride_kzs, stride_vzb, stride_vzs,
            scale_log2, offs_d, mask_d,
            HEAD_DIM=HEAD_DIM, BLOCK_N=BLOCK_N, CAUSAL=False, IS_FP32=IS_FP32, BITS=BITS,
        )  # fmt: skip
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, k_base, v_base, kz_base, vz_base, table, pos_m, full_end, kv_end, block_size,
            stride_kb, stride_ks, stride_vb, stride_vs, stride_kzb, stride_kzs, stride_vzb, stride_vzs,
            scale_log2, offs_d, mask_d,
            HEAD_DIM=HEAD_DIM, BLOCK_N=BLOCK_N, CAUSAL=True, IS_FP32=IS_FP32, BITS=BITS,
        )  # fmt: skip
        acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(
            Out + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
            acc.to(Out.dtype.element_ty),
            mask=mask_m[:, None] & mask_d[None, :],
        )


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    scale: float,
    *,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of q [T, Hq, D] (the last q_len of seq_len tokens of each sequence) over the cache.

    A uint8 cache holds int8 / int4 codes (by its last dim, D or D/2) and needs k_scale_zero / v_scale_zero."""
    check(q.dim() == 3, f"q must be [T, Hq, D], got {tuple(q.shape)}")
    num_tokens, num_heads, head_dim = q.shape
    bits = check_kv_caches(head_dim, k_cache, v_cache, k_scale_zero, v_scale_zero)
    _, block_size, num_kv_heads, _ = k_cache.shape
    check(num_heads % num_kv_heads == 0, f"Hq={num_heads} must be a multiple of Hkv={num_kv_heads}")
    check(
        (bits or q.dtype == k_cache.dtype) and q.dtype in (torch.float16, torch.bfloat16, torch.float32),
        f"q/k_cache/v_cache must share one of fp16/bf16/fp32, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}",
    )
    batch = seq_lens.shape[0]
    check(
        query_start_loc.shape == (batch + 1,) and query_start_loc.dtype in (torch.int32, torch.int64),
        f"query_start_loc must be [B+1={batch + 1}] int32/int64, got {tuple(query_start_loc.shape)}",
    )
    check(seq_lens.dim() == 1 and seq_lens.dtype in (torch.int32, torch.int64), "seq_lens must be [B] int32/int64")
    check(
        block_tables.dim() == 2 and block_tables.shape[0] == batch and block_tables.dtype == torch.int32,
        f"block_tables must be [B={batch}, max_blocks] int32, got {tuple(block_tables.shape)} {block_tables.dtype}",
    )
    for name, t in (("q", q), ("block_tables", block_tables)):
        check(t.stride(-1) == 1, f"{name} must be contiguous in its last dim")
    for t in (k_cache, v_cache, block_tables, seq_lens, query_start_loc):
        check(t.device == q.device, f"all inputs must be on {q.device}, one is on {t.device}")
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    check(out.shape == q.shape and out.dtype == q.dtype and out.stride(-1) == 1, "out must be like q")
    if num_tokens == 0 or batch == 0 or max_query_len == 0:
        return out
    if bits == 0:  # never read with BITS 0: any pointer and strides will do
        k_scale_zero = v_scale_zero = k_cache

    block_d = max(16, next_power_of_2(head_dim))
    block_m = 64 if max_query_len > 16 else 16
    block_n = 64 if block_d <= 128 else 32
    if q.dtype == torch.float32:  # fp32 tiles take twice the registers / shared memory
        block_m, block_n = min(block_m, 32), 32
    grid = (num_heads, cdiv(max_query_len, block_m), batch)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        k_scale_zero,
        v_scale_zero,
        query_start_loc,
        seq_lens,
        block_tables,
        out,
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
        block_size,
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        IS_FP32=q.dtype == torch.float32,
        BITS=bits,
        num_warps=4,
        num_stages=2,
    )
    return out
