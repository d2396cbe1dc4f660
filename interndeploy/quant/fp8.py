"""Block-wise FP8 checkpoints (Intern-S1-FP8, Intern-S1-mini-FP8, Qwen3-FP8) as quant methods.

config.json: quantization_config {"quant_method": "fp8", "activation_scheme": "dynamic",
"weight_block_size": [bn, bk]}. Every linear layer of the language model (and every expert) stores

    weight            float8_e4m3fn [N, K]                          output_dim 0, input_dim 1
    weight_scale_inv  float32 [ceil(N / bn), ceil(K / bk)]          one row per bn outputs (pack_factor bn)
    (experts: w13_weight [E, 2I, H] + w13_weight_scale_inv [E, 2I / bn, H / bk], w2 likewise)

while norms, embeddings, the LM head and the MoE router stay in bf16. After loading:

    CUDA, compute capability >= 8.9, Triton   keep FP8; w8a8: activations quantized per token group of bk,
                                              block-scaled GEMM (kernels/fp8_gemm.py, kernels/fused_moe.py)
    otherwise (CPU, older GPUs)               dequantize once into the model dtype; the unquantized path

`emulate_fp8()` keeps FP8 on CPU too, running the kernels' torch twins (tests of the FP8 arithmetic).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from interndeploy.kernels import reference_fp8, reference_moe
from interndeploy.kernels._triton import HAS_TRITON, cdiv, use_triton
from interndeploy.kernels.reference_fp8 import FP8_DTYPE, block_dequant
from interndeploy.layers.linear import LinearMethod
from interndeploy.layers.moe import FusedMoE, MoEMethod
from interndeploy.layers.weight_loader import set_weight_attrs
from interndeploy.quant.formats import register_format

logger = logging.getLogger("interndeploy")


class Fp8ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Fp8Config:
    block: tuple[int, int]  # (bn, bk): output rows x input columns per weight scale

    @classmethod
    def from_dict(cls, qc: dict[str, Any]) -> Fp8Config:
        """From config.json's quantization_config; an empty one (dummy weights at real shapes) is [128, 128]."""
        if not qc:
            return cls((128, 128))
        block = qc.get("weight_block_size")
        if not block:
            raise Fp8ConfigError(
                "FP8 checkpoints with one scale per tensor (no weight_block_size) are not supported yet; "
                "only block-wise FP8 (e.g. weight_block_size [128, 128])"
            )
        if qc.get("activation_scheme", "dynamic") != "dynamic":
            raise Fp8ConfigError(f"FP8 activation_scheme {qc['activation_scheme']!r} is not supported (only dynamic)")
        if str(qc.get("fmt", "e4m3")).lower() != "e4m3":
            raise Fp8ConfigError(f"FP8 fmt {qc['fmt']!r} is not supported (only e4m3)")
        bn, bk = (int(b) for b in block)
        if bn <= 0 or bk % 16 or (bk > 128 and bk % 128):
            raise Fp8ConfigError(f"weight_block_size {list(block)}: block_k must be a multiple of 16 (of 128 above)")
        return cls((bn, bk))

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                "weight_block_size": list(self.block)}  # fmt: skip


_EMULATE = False


@contextmanager
def emulate_fp8() -> Iterator[None]:
    """Keep FP8 weights on CPU too (the twins of the Triton kernels compute), for layers loaded in the block."""
    global _EMULATE
    prev, _EMULATE = _EMULATE, True
    try:
        yield
    finally:
        _EMULATE = prev


def fp8_kernels_available(device: torch.device) -> bool:
    """FP8 tensor cores (sm 8.9+) and Triton: keep the weights in FP8 and run the w8a8 kernels."""
    if device.type != "cuda":
        return _EMULATE
    return HAS_TRITON and torch.cuda.get_device_capability(device) >= (8, 9)


def _warn_dequantizing(device: torch.device) -> None:
    if device.type == "cuda" and not getattr(_warn_dequantizing, "done", False):
        _warn_dequantizing.done = True  # type: ignore[attr-defined]
        logger.warning("FP8 weights are dequantized to the model dtype: %s has no FP8 tensor cores or Triton "
                       "is missing (needs compute capability 8.9+)", torch.cuda.get_device_name(device))  # fmt: skip


class Fp8LinearMethod(LinearMethod):
    def __init__(self, config: Fp8Config) -> None:
        self.block = config.block

    def create_weights(
        self, layer: nn.Module, input_size: int, output_size: int, bias: bool, dtype: torch.dtype | None
    ) -> None:
        bn, bk = self.block
        tp_size = getattr(layer, "tp_size", 1)
        parts = [s // tp_size for s in getattr(layer, "output_sizes", [output_size])]
        if len(parts) > 1 and any(p % bn for p in parts):
            raise Fp8ConfigError(
                f"packed layer with parts {parts} (per rank) cannot hold FP8 block scales of {bn} rows: "
                f"each part must be a multiple of {bn}" + ("; try another --tp" if tp_size > 1 else "")
            )
        if tp_size > 1 and (output_size % bn or input_size % bk):
            raise Fp8ConfigError(f"a {input_size} -> {output_size} FP8 layer per rank does not split into "
                                 f"{bn} x {bk} blocks; try another --tp")  # fmt: skip
        layer.compute_dtype = dtype or torch.get_default_dtype()
        weight = nn.Parameter(torch.empty(output_size, input_size, dtype=FP8_DTYPE), requires_grad=False)
        layer.register_parameter("weight", set_weight_attrs(weight, output_dim=0, input_dim=1))
        scale = nn.Parameter(torch.empty(cdiv(output_size, bn), cdiv(input_size, bk), dtype=torch.float32),
                             requires_grad=False)  # fmt: skip
        # a packed layer places each part's scales at its offset / bn
        layer.register_parameter(
            "weight_scale_inv", set_weight_attrs(scale, output_dim=0, input_dim=1, packed_dim=0, pack_factor=bn)
        )
        if bias:
            b = nn.Parameter(torch.empty(output_size, dtype=layer.compute_dtype), requires_grad=False)
            layer.register_parameter("bias", set_weight_attrs(b, output_dim=0))
        else:
            layer.register_parameter("bias", None)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if layer.weight.dtype != FP8_DTYPE or fp8_kernels_available(layer.weight.device):
            return
        _warn_dequantizing(layer.weight.device)
        weight = block_dequant(layer.weight.data, layer.weight_scale_inv.data, self.block)
        del layer.weight, layer.weight_scale_inv
        layer.weight = nn.Parameter(weight.to(layer.compute_dtype), requires_grad=False)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if layer.weight.dtype != FP8_DTYPE:  # dequantized at load
            return F.linear(x, layer.weight, bias)
        if use_triton(x):
            from interndeploy.kernels import gemv

            if gemv.supports_fp8_block(x, layer.weight, self.block):  # batch-1 decode: W8A16, nothing quantized
                y = gemv.gemv_fp8_block(x, layer.weight, layer.weight_scale_inv, self.block)
                return y if bias is None else y + bias
            from interndeploy.kernels.fp8_gemm import fp8_block_linear
        else:
            fp8_block_linear = reference_fp8.fp8_block_linear
        return fp8_block_linear(x, layer.weight, layer.weight_scale_inv, self.block, bias)


class Fp8MoEMethod(MoEMethod):
    def __init__(self, config: Fp8Config) -> None:
        self.block = config.block

    def create_weights(
        self, layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype | None
    ) -> None:
        bn, bk = self.block
        if intermediate_size % bn or intermediate_size % bk:
            raise Fp8ConfigError(
                f"MoE intermediate size {intermediate_size} per rank is not a multiple of the FP8 block "
                f"{list(self.block)}" + ("; try another --tp" if getattr(layer, "tp_size", 1) > 1 else "")
            )
        layer.compute_dtype = dtype or torch.get_default_dtype()
        e, h, i = num_experts, hidden_size, intermediate_size
        for name, shape, scale_shape in (
            ("w13", (e, 2 * i, h), (e, 2 * i // bn, cdiv(h, bk))),
            ("w2", (e, h, i), (e, cdiv(h, bn), i // bk)),
        ):
            weight = nn.Parameter(torch.empty(shape, dtype=FP8_DTYPE), requires_grad=False)
            scale = nn.Parameter(torch.empty(scale_shape, dtype=torch.float32), requires_grad=False)
            layer.register_parameter(f"{name}_weight", weight)
            layer.register_parameter(f"{name}_weight_scale_inv", set_weight_attrs(scale, block_shape=self.block))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if layer.w13_weight.dtype != FP8_DTYPE or fp8_kernels_available(layer.w13_weight.device):
            return
        _warn_dequantizing(layer.w13_weight.device)
        for name in ("w13", "w2"):
            weight = block_dequant(getattr(layer, f"{name}_weight").data,
                                   getattr(layer, f"{name}_weight_scale_inv").data, self.block)  # fmt: skip
            delattr(layer, f"{name}_weight")
            delattr(layer, f"{name}_weight_scale_inv")
            dense = nn.Parameter(weight.to(layer.compute_dtype), requires_grad=False)
            layer.register_parameter(f"{name}_weight", dense)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        if layer.w13_weight.dtype != FP8_DTYPE:  # dequantized at load
            return super().apply(layer, x, topk_weights, topk_ids)
        if use_triton(x):
            from interndeploy.kernels.fused_moe import fused_moe
        else:
            fused_moe = reference_moe.fused_moe
        return fused_moe(
            x, layer.w13_weight, layer.w2_weight, topk_weights, topk_ids,
            w13_scale=layer.w13_weight_scale_inv, w2_scale=layer.w2_weight_scale_inv, block_shape=self.block,
        )  # fmt: skip


def fp8_format(qc: dict[str, Any]) -> Callable[[nn.Module], LinearMethod | MoEMethod]:
    """The weight-format builder (quant/formats.py): each layer built for an FP8 checkpoint gets its method."""
    config = Fp8Config.from_dict(qc)

    def method_for(layer: nn.Module) -> LinearMethod | MoEMethod:
        return Fp8MoEMethod(config) if isinstance(layer, FusedMoE) else Fp8LinearMethod(config)

    return method_for


register_format("fp8", fp8_format)
