"""Gated activations of the MLP."""

from __future__ import annotations

import torch
from torch import nn

from interndeploy.kernels import reference
from interndeploy.kernels._triton import use_triton
from interndeploy.kernels.silu_and_mul import silu_and_mul


class SiluAndMul(nn.Module):
    """[T, 2I] = [gate | up] -> silu(gate) * up [T, I]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x) if use_triton(x) else reference.silu_and_mul(x)
