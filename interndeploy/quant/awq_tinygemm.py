"""AWQ weights repacked for torch's int4 kernel (`torch._weight_int4pack_mm`, "tinygemm"), the decode path.

torch's kernel multiplies bf16 activations by int4 weights held in its tensor-core tile layout, with one
bf16 (scale, zero) pair per group and output column, dequantizing W[n, k] = (q - 8) * scale + zero. AWQ's
(q - z) * s is the same weight with zero = (8 - z) * s, so the repack is exact up to rounding s and
(8 - z) * s to bf16 (AWQ scales are fp16: 3 mantissa bits fewer, well inside the int4 error).

On an H100 at the InternLM2.5-7B layers it runs a batch-1 layer set in 65 us against 138 us for our Triton
GEMV and 157 us for cuBLAS on bf16 weights (scripts/gpu_awq_variants.py); from 16 rows on it falls behind
the Triton GEMM, so layers use it for M <= MAX_M only and keep the AWQ tensors for everything else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from interndeploy.kernels.reference_awq import unpack_int4

logger = logging.getLogger("interndeploy")

MAX_M = 8  # rows per call up to which the int4 kernel beats the Triton GEMM (H100: M=8 24 us, M=16 36 vs 32 us)
INNER_K_TILES = 8  # torch's packing parameter (2, 4 or 8); 8 was fastest at every 7B layer on an H100
GROUP_SIZES = (32, 64, 128, 256)  # what the kernel supports


@dataclass(frozen=True, slots=True)
class Int4PackedWeight:
    packed: torch.Tensor  # torch._convert_weight_to_int4pack's layout
    scale_zero: torch.Tensor  # [K/G, N, 2] bf16: scale, zero
    group_size: int


def kernel_available(device: torch.device) -> bool:
    return (
        device.type == "cuda"
        and hasattr(torch, "_weight_int4pack_mm")
        and hasattr(torch, "_convert_weight_to_int4pack")
        and torch.cuda.get_device_capability(device) >= (8, 0)
    )


def repack(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor) -> Int4PackedWeight | None:
    """The AWQ tensors (qweight [K, N/8], scales [K/G, N], qzeros [K/G, N/8]) in torch's int4 layout, or None
    where the kernel cannot take them (device, group size, K not a multiple of 16 * INNER_K_TILES)."""
    k, n = qweight.shape[0], scales.shape[1]
    group = k // max(scales.shape[0], 1)
    if not kernel_available(qweight.device) or group not in GROUP_SIZES or k % (16 * INNER_K_TILES) or n % 8:
        return None
    q = unpack_int4(qweight).t()  # [N, K] in [0, 15]
    nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous()  # two k per byte, even k high
    del q
    try:
        packed = torch._convert_weight_to_int4pack(nibbles, INNER_K_TILES)
    except RuntimeError as e:  # a torch build without the CUDA kernel, or shapes it refuses
        logger.debug("torch's int4 kernel cannot take a %d x %d AWQ layer: %s", k, n, e)
        return None
    return Int4PackedWeight(packed, scale_zero(scales, qzeros), group)


def scale_zero(scales: torch.Tensor, qzeros: torch.Tensor) -> torch.Tensor:
    """AWQ scales [K/G, N] and packed zero points -> torch's [K/G, N, 2] bf16 (scale, (8 - z) * scale)."""
    s = scales.float()
    zero = (8 - unpack_int4(qzeros).float()) * s
    return torch.stack([s, zero], dim=-1).to(torch.bfloat16).contiguous()


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """x [M, K] (any float dtype) @ W^T -> [M, N] in x's dtype; the kernel itself runs in bf16."""
    y = torch._weight_int4pack_mm(x.to(torch.bfloat16).contiguous(), packed, group_size, scale_zero)
    return y.to(x.dtype)
