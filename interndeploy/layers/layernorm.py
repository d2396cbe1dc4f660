"""RMSNorm, with the residual add fused in when a residual stream is given."""

from __future__ import annotations

import torch
from torch import nn

from interndeploy.kernels import reference
from interndeploy.kernels import rms_norm as triton_norm
from interndeploy.kernels._triton import use_triton
from interndeploy.layers.weight_loader import default_weight_loader


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x) when residual is None, else (norm(x + residual), x + residual)."""
        ops = triton_norm if use_triton(x) else reference
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
