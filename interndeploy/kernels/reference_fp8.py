"""Pure-torch FP8 (e4m3) block quantization: the twins of `kernels/fp8_gemm.py` and the CPU path.

Block-wise FP8 checkpoints (DeepSeek-V3, Qwen3-FP8, Intern-S1-FP8) store each linear weight W [N, K] as

    weight            float8_e4m3fn [N, K]
    weight_scale_inv  float32 [ceil(N / bn), ceil(K / bk)]      W ~= weight * scale_inv (per bn x bk tile)

with (bn, bk) = quantization_config.weight_block_size, usually [128, 128]. Activations are quantized on
the fly per token and per group of bk input features (w8a8), so one K tile of the GEMM has one activation
scale per row and one weight scale per bn columns:

    C[m, n] = sum over K tiles t:  a_scale[m, t] * w_scale[n // bn, t] * sum_{k in t} A_q[m, k] W_q[n, k]
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALE_EPS = 1e-10  # floor of a group's absmax, so an all-zero group gets a finite scale


def _expand_blocks(scale: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """scale [ceil(N / bn), ceil(K / bk)] -> one value per element [N, K]."""
    bn, bk = block
    return scale.repeat_interleave(bn, 0)[: shape[0]].repeat_interleave(bk, 1)[:, : shape[1]]


def block_dequant(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """FP8 weight [..., N, K] with block scales [..., ceil(N / bn), ceil(K / bk)] -> fp32 [..., N, K]."""
    if weight.dim() > 2:
        return torch.stack([block_dequant(w, s, block) for w, s in zip(weight, scale, strict=True)])
    n, k = weight.shape
    expected = (-(-n // block[0]), -(-k // block[1]))
    if tuple(scale.shape) != expected:
        raise ValueError(f"weight {tuple(weight.shape)} with block {list(block)} needs scales {expected}, "
                         f"got {tuple(scale.shape)}")
    return weight.float() * _expand_blocks(scale.float(), block, (n, k))


def quantize_weight_block_fp8(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (float8 [N, K], scale_inv fp32 [ceil(N / bn), ceil(K / bk)]): each tile's absmax maps to 448."""
    n, k = weight.shape
    bn, bk = block
    rows, cols = -(-n // bn), -(-k // bk)
    padded = torch.zeros(rows * bn, cols * bk, dtype=torch.float32, device=weight.device)
    padded[:n, :k] = weight.float()
    tiles = padded.view(rows, bn, cols, bk)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=SCALE_EPS) / FP8_MAX  # [rows, cols]
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(rows * bn, cols * bk)[:n, :k].contiguous(), scale


def quantize_experts_block_fp8(weights: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked expert weights [E, N, K] -> (float8 [E, N, K], scale_inv [E, ceil(N / bn), ceil(K / bk)])."""
    q, s = zip(*(quantize_weight_block_fp8(w, block) for w in weights), strict=True)
    return torch.stack(q), torch.stack(s)


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (float8 [M, K], scale fp32 [M, ceil(K / group_size)]), x ~= q * scale per group.

    Computed in fp32 as the Triton kernel does: scale = max(absmax, eps) / 448, q = clamp(x / scale).
    """
    m, k = x.shape
    groups = -(-k // group_size)
    padded = torch.zeros(m, groups * group_size, dtype=torch.float32, device=x.device)
    padded[:, :k] = x.float()
    tiles = padded.view(m, groups, group_size)
    scale = tiles.abs().amax(-1).clamp(min=SCALE_EPS) / FP8_MAX
    q = (tiles / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(m, -1)[:, :k].contiguous(), scale


def w8a8_block_fp8_matmul(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    block: tuple[int, int],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """A_q [M, K] fp8 with per-token-group scales [M, ceil(K / bk)], W [N, K] fp8 with block scales -> [M, N].

    Dequantizes both in fp32 and multiplies: equal to the Triton kernel up to summation order.
    """
    a = a_q.float() * a_scale.float().repeat_interleave(block[1], 1)[:, : a_q.shape[1]]
    return (a @ block_dequant(weight, weight_scale, block).T).to(out_dtype)


def fp8_block_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    block: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T (+ bias) through w8a8: x [..., K] quantized per token group of bk, W block FP8 -> [..., N]."""
    x2 = x.reshape(-1, x.shape[-1])
    q, s = per_token_group_quant_fp8(x2, block[1])
    y = w8a8_block_fp8_matmul(q, s, weight, weight_scale, block, x.dtype)
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], weight.shape[0])
