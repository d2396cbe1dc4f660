"""Pure-torch mixture of experts: the twin of `kernels/fused_moe.py` and the CPU path.

Expert weights of one layer are stacked:

    w13 [E, 2I, H]   rows [gate_e | up_e] of expert e      (float8 with scales [E, 2I / bn, H / bk] when FP8)
    w2  [E, H, I]    down_e

Token t goes to the experts topk_ids[t, :] with weights topk_weights[t, :] (routing is done by the caller):

    out[t] = sum_j topk_weights[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t)),   e = topk_ids[t, j]

The loop runs over the experts the batch touches, each on the rows routed to it (a grouped GEMM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interndeploy.kernels.reference_fp8 import block_dequant, per_token_group_quant_fp8


def _quant_dequant(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x as the FP8 kernel sees it after per-token-group quantization, in fp32."""
    q, s = per_token_group_quant_fp8(x, group_size)
    return q.float() * s.repeat_interleave(group_size, 1)[:, : x.shape[1]]


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
    """x [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_weights/ids [T, k] -> [T, H] in x's dtype.

    Unquantized: matmuls in x's dtype, as transformers' eager experts. FP8 (scales + block_shape given):
    activations quantized per token group and weights dequantized, products in fp32, the intermediate
    rounded to x's dtype between the two GEMMs, as the Triton kernel does.
    """
    fp8 = w13_scale is not None
    if fp8 and (w2_scale is None or block_shape is None):
        raise ValueError("FP8 experts need w13_scale, w2_scale and block_shape")
    num_tokens, top_k = topk_ids.shape
    num_experts = w13.shape[0]
    flat = topk_ids.flatten().long()
    weights = topk_weights.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    out = torch.zeros(num_tokens, x.shape[1], dtype=torch.float32 if fp8 else x.dtype, device=x.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start : start + count]  # (token, slot) pairs routed to this expert, as t * k + j
        start += count
        tokens = pairs // top_k
        if fp8:
            a = _quant_dequant(x[tokens], block_shape[1])
            inter = (a @ block_dequant(w13[expert], w13_scale[expert], block_shape).T).to(x.dtype)
            gate, up = inter.chunk(2, dim=-1)
            act = _quant_dequant(F.silu(gate) * up, block_shape[1])
            y = (act @ block_dequant(w2[expert], w2_scale[expert], block_shape).T) * weights[pairs, None].float()
            out.index_add_(0, tokens, y.to(x.dtype).float())
        else:
            gate, up = F.linear(x[tokens], w13[expert]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, w2[expert]) * weights[pairs, None].to(x.dtype)
            out.index_add_(0, tokens, y)
    return out.to(x.dtype)
