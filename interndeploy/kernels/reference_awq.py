"""AWQ int4 weights in AutoAWQ's "GEMM" layout: packing, and the pure-torch dequantize / matmul (the CPU path).

A linear layer's weight W [N out, K in] is stored transposed, in groups of G input rows:

    qweight [K, N / 8]     int32   eight int4 values of one input row per int32
    qzeros  [K / G, N / 8] int32   the zero point of each (group, column), packed the same way
    scales  [K / G, N]     float   the step of each (group, column)

    W^T[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]

Packing order: the int32 holding columns 8c .. 8c + 7 keeps column 8c + AWQ_ORDER[p] in nibble p
(bits 4p .. 4p + 3), so column 8c + j sits at bit offset AWQ_SHIFTS[j]:

    nibble p     0  1  2  3  4  5  6  7
    column j     0  2  4  6  1  3  5  7        (AutoAWQ, vLLM, LMDeploy all read this order)

Twin of `kernels/awq_gemm.py`.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ_ORDER[p] = the column held in nibble p
AWQ_SHIFTS = tuple(4 * AWQ_ORDER.index(j) for j in range(8))  # bit offset of column j: 0, 16, 4, 20, 8, 24, 12, 28
PACK = 8  # int4 values per int32


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q [..., N] integers in [0, 15] -> [..., N / 8] int32 in AWQ order."""
    if q.shape[-1] % PACK:
        raise ValueError(f"the packed dim must be a multiple of {PACK}, got {q.shape[-1]}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError("int4 values must lie in [0, 15]")
    q = q.to(torch.int64).unflatten(-1, (-1, PACK))
    packed = torch.zeros(q.shape[:-1], dtype=torch.int64, device=q.device)
    for j in range(PACK):
        packed |= q[..., j] << AWQ_SHIFTS[j]
    # two's complement: the top nibble may set bit 31
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[..., N / 8] int32 in AWQ order -> [..., N] int32 in [0, 15]."""
    if packed.dtype != torch.int32:
        raise ValueError(f"packed int4 tensors are int32, got {packed.dtype}")
    shifts = torch.tensor(AWQ_SHIFTS, dtype=torch.int32, device=packed.device)
    # arithmetic shift sign-extends the top nibble; the mask keeps only the 4 bits we want
    return ((packed.unsqueeze(-1) >> shifts) & 0xF).flatten(-2)


def awq_group_size(qweight: torch.Tensor, scales: torch.Tensor) -> int:
    k, groups = qweight.shape[0], scales.shape[0]
    if groups == 0 or k % groups:
        raise ValueError(f"qweight has {k} input rows, which {groups} scale groups do not divide")
    return k // groups


def awq_dequantize(
    qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """W^T [K, N] (in `dtype`, default the scales' dtype) from qweight [K, N/8], scales [K/G, N], qzeros [K/G, N/8]."""
    group = awq_group_size(qweight, scales)
    n = scales.shape[1]
    if qweight.shape[1] * PACK != n or qzeros.shape != (scales.shape[0], n // PACK):
        raise ValueError(
            f"AWQ shapes do not agree: qweight {tuple(qweight.shape)}, scales {tuple(scales.shape)}, "
            f"qzeros {tuple(qzeros.shape)}"
        )
    q = unpack_int4(qweight).unflatten(0, (-1, group))  # [K/G, G, N]
    z = unpack_int4(qzeros).unsqueeze(1)  # [K/G, 1, N]
    w = (q - z).float() * scales.float().unsqueeze(1)
    return w.flatten(0, 1).to(dtype or scales.dtype)


def awq_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ W^T -> [M, N] in x's dtype (weights dequantized to x's dtype first)."""
    return x @ awq_dequantize(qweight, scales, qzeros, x.dtype)
