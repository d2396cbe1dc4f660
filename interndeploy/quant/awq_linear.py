"""AWQ int4 weights (AutoAWQ "GEMM" layout) as a quant method of the linear layer.

A layer's parameters, for input size K and output size N of this rank (layout in kernels/reference_awq.py):

    qweight [K, N/8] int32    input_dim 0, output_dim 1 (packed x8)
    qzeros  [K/G, N/8] int32  input_dim 0 (groups), output_dim 1 (packed x8)
    scales  [K/G, N]          input_dim 0 (groups), output_dim 1
    bias    [N]               as unquantized

The layer's own weight loader shards them (column: along N, row: along K), and packed modules
(qkv, gate_up, InternLM2's grouped wqkv) place each part at its offset divided by the pack factor.
On CUDA `apply` runs torch's int4 kernel for up to awq_tinygemm.MAX_M rows (decode; the weights repacked
for it once after loading, kept beside the AWQ tensors as buffers) and the Triton W4A16 kernels otherwise;
elsewhere it dequantizes once, keeps the float weight beside the packed one (CPU memory is plentiful, the
reference matmul is then as fast as unquantized) and multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from interndeploy.kernels._triton import use_triton
from interndeploy.kernels.reference_awq import PACK, awq_dequantize
from interndeploy.layers.linear import LinearMethod
from interndeploy.layers.weight_loader import set_weight_attrs
from interndeploy.quant import awq_tinygemm


class AWQConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AWQConfig:
    bits: int = 4
    group_size: int = 128  # input rows per scale / zero point; -1 = the whole input dim
    zero_point: bool = True  # False: symmetric (zero points all 8)
    version: str = "gemm"

    @classmethod
    def from_dict(cls, qc: dict[str, Any]) -> AWQConfig:
        """From config.json's quantization_config (also AutoAWQ's older w_bit / q_group_size names)."""
        bits = int(qc.get("bits", qc.get("w_bit", 4)))
        group = int(qc.get("group_size", qc.get("q_group_size", 128)))
        version = str(qc.get("version", "gemm")).lower()
        if bits != 4:
            raise AWQConfigError(f"AWQ weights with {bits} bits are not supported (only 4)")
        if version != "gemm":
            raise AWQConfigError(f"AWQ version {version!r} is not supported (only the GEMM layout)")
        if group == 0 or group < -1:
            raise AWQConfigError(f"AWQ group_size must be positive or -1, got {group}")
        return cls(bits, group, bool(qc.get("zero_point", True)), version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": "awq",
            "bits": self.bits,
            "group_size": self.group_size,
            "zero_point": self.zero_point,
            "version": self.version,
        }


class AWQLinearMethod(LinearMethod):
    def __init__(self, config: AWQConfig) -> None:
        self.config = config

    def create_weights(
        self, layer: nn.Module, input_size: int, output_size: int, bias: bool, dtype: torch.dtype | None
    ) -> None:
        group = self.config.group_size if self.config.group_size > 0 else input_size
        if input_size % group or output_size % PACK:
            raise AWQConfigError(
                f"a {input_size} -> {output_size} linear layer cannot hold AWQ weights with group size {group}: "
                f"the input size must be a multiple of the group size and the output size of {PACK}"
            )
        groups = input_size // group

        def param(shape: tuple[int, ...], dt: torch.dtype | None, packed: bool) -> nn.Parameter:
            p = nn.Parameter(torch.empty(shape, dtype=dt), requires_grad=False)
            attrs: dict[str, Any] = {"input_dim": 0, "output_dim": 1}
            if packed:
                attrs.update(packed_dim=1, pack_factor=PACK)
            return set_weight_attrs(p, **attrs)

        layer.register_parameter("qweight", param((input_size, output_size // PACK), torch.int32, True))
        layer.register_parameter("qzeros", param((groups, output_size // PACK), torch.int32, True))
        layer.register_parameter("scales", param((groups, output_size), dtype, False))
        if bias:
            b = nn.Parameter(torch.empty(output_size, dtype=dtype), requires_grad=False)
            layer.register_parameter("bias", set_weight_attrs(b, output_dim=0))
        else:
            layer.register_parameter("bias", None)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        layer.awq_float_weight = None  # recomputed from the packed weights on first use off CUDA
        int4 = awq_tinygemm.repack(layer.qweight, layer.scales, layer.qzeros)
        if int4 is not None:  # buffers: they move with the layer and count in the weights' memory
            layer.register_buffer("int4_packed", int4.packed, persistent=False)
            layer.register_buffer("int4_scale_zero", int4.scale_zero, persistent=False)

    def float_weight(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized weight [N, K] in `dtype`, cached on the layer (a plain attribute, not a parameter)."""
        cached = getattr(layer, "awq_float_weight", None)
        if cached is None or cached.dtype != dtype:
            cached = awq_dequantize(layer.qweight, layer.scales, layer.qzeros, dtype).t().contiguous()
            layer.awq_float_weight = cached
        return cached

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if use_triton(x):
            from interndeploy.kernels.awq_gemm import awq_gemm

            x2 = x.reshape(-1, x.shape[-1])
            packed = layer._buffers.get("int4_packed")
            if packed is not None and packed.device == x.device and x2.shape[0] <= awq_tinygemm.MAX_M:
                group = layer.qweight.shape[0] // layer.scales.shape[0]
                y = awq_tinygemm.int4_matmul(x2, packed, layer.int4_scale_zero, group)
            else:
                y = awq_gemm(x2, layer.qweight, layer.scales, layer.qzeros)
            y = y.view(*x.shape[:-1], y.shape[-1])
            return y if bias is None else y + bias
        if x.is_cuda:  # reference kernels forced on CUDA: do not keep a float copy in GPU memory
            w = awq_dequantize(layer.qweight, layer.scales, layer.qzeros, x.dtype).t()
            return F.linear(x, w, bias)
        return F.linear(x, self.float_weight(layer, x.dtype), bias)
