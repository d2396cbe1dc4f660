"""The AWQ algorithm on plain tensors: group-wise int4 quantization, activation-aware scales, clipping, packing.

A linear layer y = x W^T (W [out, in]) is quantized in groups of G consecutive input channels per output row:

    asymmetric (zero point):  s = (max - min) / 15,   z = round(-min / s),   q = clamp(round(w / s) + z, 0, 15)
    symmetric  (--w-sym):     s = absmax / 7,         z = 8,                 q = clamp(round(w / s), -8, 7) + 8
    w ~ (q - z) * s

Activation-aware scaling multiplies input channel c of W by a scale t_c and divides the producer of that
channel (the RMSNorm weight, or the previous linear's output row) by t_c: the float model is unchanged,
but channels that see large activations get more of the int4 grid. AWQ picks

    t = x_stat^ratio / w_stat^(1 - ratio),  normalised so that sqrt(max t * min t) = 1

x_stat: the channel's mean |x| (search) or max |x| (fixed ratio 0.5, LMDeploy's default); w_stat: the
channel's mean |w| relative to its group's absmax. With a search, the ratio (or no scaling at all) that
minimises || x W^T - (x / t) Q(W t)^T ||^2 over the calibration tokens wins; clipping then shrinks each
group's range where that lowers the same error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from interndeploy.kernels.reference_awq import pack_int4

SCALE_DTYPE = torch.float16  # scales are stored in fp16 (AutoAWQ's format); quantize against the rounded value
N_GRID = 20


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    out, inp = w.shape
    g = group_size if group_size > 0 else inp
    if inp % g:
        raise ValueError(f"group size {g} does not divide the input size {inp}")
    return w.reshape(out, inp // g, g)


def quantize(
    w: torch.Tensor, bits: int, group_size: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [out, in] -> q [out, in] int32 in [0, 2^bits), scales [out, in/G] fp32 (fp16-exact), zeros [out, in/G]."""
    wg = _groups(w.float(), group_size)
    top = 2**bits - 1
    if sym:
        half = 2 ** (bits - 1)
        scales = (wg.abs().amax(-1, keepdim=True) / (half - 1)).clamp(min=1e-5).to(SCALE_DTYPE).float()
        zeros = torch.full_like(scales, half)
        q = torch.clamp(torch.round(wg / scales), -half, half - 1) + zeros
    else:
        hi, lo = wg.amax(-1, keepdim=True), wg.amin(-1, keepdim=True)
        scales = ((hi - lo) / top).clamp(min=1e-5).to(SCALE_DTYPE).float()
        zeros = torch.clamp(torch.round(-lo / scales), 0, top)
        q = torch.clamp(torch.round(wg / scales) + zeros, 0, top)
    return q.to(torch.int32).flatten(1), scales.squeeze(-1), zeros.squeeze(-1).to(torch.int32)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """w after a quantize / dequantize round trip (fp32)."""
    q, scales, zeros = quantize(w, bits, group_size, sym)
    qg = _groups(q, group_size)
    return ((qg - zeros.unsqueeze(-1)).float() * scales.unsqueeze(-1)).flatten(1)


def pack_awq(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> dict[str, torch.Tensor]:
    """w [out, in] -> AutoAWQ GEMM tensors: qweight [in, out/8], qzeros [in/G, out/8] int32, scales [in/G, out] fp16."""
    if bits != 4:
        raise ValueError(f"only 4-bit AWQ weights can be packed, got {bits} bits")
    q, scales, zeros = quantize(w, bits, group_size, sym)
    return {
        "qweight": pack_int4(q.t().contiguous()),
        "qzeros": pack_int4(zeros.t().contiguous()),
        "scales": scales.t().contiguous().to(SCALE_DTYPE),
    }


def weight_channel_stat(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per input channel: mean over output rows of |w| / (its group's absmax) -> [in]."""
    wg = _groups(w.float().abs(), group_size)
    rel = wg / wg.amax(-1, keepdim=True).clamp(min=1e-8)
    return rel.flatten(1).mean(0)


def smooth_scales(x_stat: torch.Tensor, w_stat: torch.Tensor, ratio: float) -> torch.Tensor:
    """t = x_stat^ratio / w_stat^(1 - ratio), normalised to geometric mid-range 1; dead channels get 1."""
    x_stat, w_stat = x_stat.float(), w_stat.float().clamp(min=1e-5)
    live = x_stat > 0
    t = (x_stat.pow(ratio) / w_stat.pow(1 - ratio)).clamp(min=1e-4)
    if live.any():
        t = t / (t[live].max() * t[live].min()).sqrt()
    return torch.where(live, t, torch.ones_like(t))


def _output_error(x: torch.Tensor, w_ref: torch.Tensor, w_new: torch.Tensor, chunk: int = 4096) -> float:
    """mean over tokens and outputs of (x w_ref^T - x w_new^T)^2, in chunks of output rows."""
    total = 0.0
    for start in range(0, w_ref.shape[0], chunk):
        diff = w_ref[start : start + chunk] - w_new[start : start + chunk]
        total += float((x @ diff.t()).pow(2).sum())
    return total / (x.shape[0] * w_ref.shape[0])


def search_scales(
    x: torch.Tensor,
    w: torch.Tensor,
    x_stat: torch.Tensor,
    w_stat: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool,
    expand: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_grid: int = N_GRID,
) -> tuple[torch.Tensor, float | None]:
    """The scales t (and their ratio; None = no scaling) minimising the int4 output error of x [n, in] through
    w [out, in]. x_stat / w_stat / t live in "scale space"; `expand` maps t to w's input channels (identity by
    default; for GQA's o_proj, one v channel feeds several q heads)."""
    expand = expand or (lambda t: t)
    x, w = x.float(), w.float()
    best_t = torch.ones_like(x_stat, dtype=torch.float32)
    best_ratio: float | None = None
    best = _output_error(x, w, fake_quantize(w, bits, group_size, sym))
    for i in range(n_grid):
        ratio = i / n_grid
        t = smooth_scales(x_stat, w_stat, ratio)
        te = expand(t).to(w.device)
        err = _output_error(x, w, fake_quantize(w * te, bits, group_size, sym) / te)
        if err < best:
            best, best_t, best_ratio = err, t, ratio
    return best_t, best_ratio


@torch.no_grad()
def search_clip(
    x: torch.Tensor,
    w: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool,
    n_grid: int = N_GRID,
    max_shrink: float = 0.5,
    max_tokens: int = 512,
    rows_per_batch: int = 256,
) -> torch.Tensor:
    """w [out, in] with each (row, group) clamped to +-shrink x its absmax, the shrink in 1 .. 1 - max_shrink
    that minimises that group's share of the output error on x [n, in] (AWQ's auto-clip)."""
    x = x.float()
    if x.shape[0] > max_tokens:
        x = x[torch.linspace(0, x.shape[0] - 1, max_tokens, device=x.device).long()]
    xg = _groups(x, group_size).transpose(0, 1)  # [groups, n, G]
    out = w.clone().float()
    for start in range(0, w.shape[0], rows_per_batch):
        wb = _groups(out[start : start + rows_per_batch], group_size).transpose(0, 1)  # [groups, rows, G]
        ref = torch.bmm(wb, xg.transpose(1, 2))  # [groups, rows, n]: each group's partial output
        absmax = wb.abs().amax(-1, keepdim=True)
        best_err = torch.full(absmax.shape, float("inf"), device=w.device)
        best_max = absmax.clone()
        for i in range(int(max_shrink * n_grid)):
            limit = absmax * (1 - i / n_grid)
            cur = torch.clamp(wb, -limit, limit)
            rows = cur.transpose(0, 1).flatten(1)  # back to [rows, in]
            q = _groups(fake_quantize(rows, bits, group_size, sym), group_size).transpose(0, 1)
            err = (torch.bmm(q, xg.transpose(1, 2)) - ref).pow(2).mean(-1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, limit, best_max)
        clipped = torch.clamp(wb, -best_max, best_max).transpose(0, 1).flatten(1)
        out[start : start + rows_per_batch] = clipped
    return out.to(w.dtype)
