"""Pure-torch online KV cache quantization (quant_policy 8 / 4): the twin of the quantize step in
`kernels/store_kvcache.py` and of the dequantize step in the attention kernels (`kernels/kv_quant.py`).

Asymmetric, per token and per kv head: each [D] row x of K or V gets its own scale and zero point,

    scale = max(max(x) - min(x), eps) * (1 / qmax)          qmax = 255 (int8) or 15 (int4)
    zero  = min(x)
    code  = clamp(floor((x - zero) / scale + 0.5), 0, qmax)      x ~= code * scale + zero

with scale and zero rounded to their storage dtype first and the codes computed from the rounded values,
so dequantizing is off by at most scale / 2 (plus the zero's own rounding, 2^-11 of |min| in fp16).

One layer's cache, K and V alike (logical shapes; the kernels take any strides):

    k_cache       uint8 [num_blocks, block_size, Hkv, D]       int8: one code per byte
                  uint8 [num_blocks, block_size, Hkv, D / 2]   int4: byte j = code[j] | code[j + D/2] << 4
    k_scale_zero  [num_blocks, block_size, Hkv, 2]             (scale, zero); fp16, fp32 for fp32 models

int4 packs the two halves of the head dim rather than neighbours: a kernel reading element d loads byte
d % (D/2) and shifts it right by 4 * (d // (D/2)), a full [N, D] tile with no interleave.
"""

from __future__ import annotations

import torch

QMAX = {8: 255, 4: 15}
SCALE_EPS = 1e-4  # floor of a row's scale: a constant row gets codes 0 and dequantizes to its zero point


def kv_cache_bits(cache: torch.Tensor, head_dim: int) -> int:
    """0 for a cache of values, 8 / 4 for int8 / int4 codes (uint8 of last dim D / D/2); ValueError otherwise."""
    if cache.dtype != torch.uint8:
        if cache.shape[-1] != head_dim:
            raise ValueError(f"cache last dim {cache.shape[-1]} != head_dim {head_dim}")
        return 0
    if cache.shape[-1] == head_dim:
        return 8
    if cache.shape[-1] * 2 == head_dim:
        return 4
    raise ValueError(f"a uint8 cache must have last dim head_dim {head_dim} (int8) or {head_dim // 2} (int4), "
                     f"got {cache.shape[-1]}")


def quantize_kv(x: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (codes uint8 [..., D] (int8) or [..., D/2] (int4), scale_zero [..., 2] scale_dtype)."""
    qmax = QMAX[bits]
    xf = x.float()
    lo, hi = xf.amin(-1), xf.amax(-1)
    scale = ((hi - lo) * (1.0 / qmax)).clamp_min(SCALE_EPS).to(scale_dtype)
    zero = lo.to(scale_dtype)
    codes = torch.floor((xf - zero.float()[..., None]) / scale.float()[..., None] + 0.5).clamp_(0, qmax)
    codes = codes.to(torch.uint8)
    if bits == 4:
        half = x.shape[-1] // 2
        codes = codes[..., :half] | (codes[..., half:] << 4)
    return codes, torch.stack((scale, zero), -1)


def dequantize_kv(codes: torch.Tensor, scale_zero: torch.Tensor, bits: int) -> torch.Tensor:
    """codes uint8 [..., D or D/2] with scale_zero [..., 2] -> fp32 [..., D]."""
    if bits == 4:
        codes = torch.cat((codes & 15, codes >> 4), -1)
    scale, zero = scale_zero.float().unbind(-1)
    return codes.float() * scale[..., None] + zero[..., None]
