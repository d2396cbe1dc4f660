"""Rotary position embedding (rotate-half, as HF Llama / InternLM2) with the scalings InternLM checkpoints use.

    default   angle(p, i) = p * inv_freq[i],  inv_freq[i] = base ** (-2i / dim)
    linear    positions divided by `factor`  (== inv_freq / factor)
    llama3    low frequencies divided by `factor`, high kept, a smooth ramp between
    dynamic   NTK: while a sequence is at most max_position_embeddings long, the default table; once its
              length L exceeds it, base' = base * (factor * L / max_pos - (factor - 1)) ** (dim / (dim - 2))
              for the tokens computed at that length. Keys already cached keep the angles they were
              written with, exactly as HF's dynamic rope does with a KV cache.

cos/sin come from a table [max_positions, dim / 2] indexed by position, except for dynamic-NTK tokens
past max_position_embeddings, which are computed per token from `meta.token_seq_lens` (no host sync).
The table covers max_position_embeddings (x factor for linear); `reserve_positions` grows it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from interndeploy.kernels import reference
from interndeploy.kernels import rotary as triton_rotary
from interndeploy.kernels._triton import use_triton
from interndeploy.worker.forward_context import get_forward_context


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] by cos/sin [T, D/2]: the Triton kernel on CUDA, else the reference."""
    if use_triton(q):
        return triton_rotary.apply_rotary(q, k, cos, sin)
    return reference.apply_rotary(q, k, cos, sin)


def rope_config(config: Any) -> tuple[float, dict[str, Any]]:
    """(rope_theta, scaling dict with a normalised "rope_type") from either config style.

    Old configs: `rope_theta` + `rope_scaling` ({"type"| "rope_type": ..., "factor": ...} or None).
    transformers >= 5: `rope_parameters` with rope_theta and rope_type inside.
    """
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    params = dict(params)
    theta = float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return theta, params


def _inv_freq(base: float | torch.Tensor, dim: int) -> torch.Tensor:
    if isinstance(base, torch.Tensor):  # made on base's device: no host copy, so it can be graph-captured
        exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=base.device).float() / dim
        return 1.0 / (base[..., None] ** exponent)
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (base**exponent)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any], max_position: int) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", max_position)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, out)


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_dim: int,
        max_position_embeddings: int,
        base: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        scaling = dict(rope_scaling or {})
        self.rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
        self.head_dim = head_dim
        self.base = base
        self.max_position_embeddings = max_position_embeddings
        self.factor = float(scaling.get("factor", 1.0))

        inv_freq = _inv_freq(base, head_dim)
        table_len = max_position_embeddings
        if self.rope_type == "linear":
            inv_freq = inv_freq / self.factor
            table_len = int(max_position_embeddings * self.factor)
        elif self.rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling, max_position_embeddings)
        elif self.rope_type not in ("default", "dynamic"):
            raise ValueError(
                f"rope_scaling type {self.rope_type!r} is not supported (supported: default, linear, dynamic, llama3)"
            )
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [dim / 2]
        self._build_table(table_len)

    def _build_table(self, table_len: int) -> None:
        positions = torch.arange(table_len, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(positions, self.inv_freq.float())
        self.register_buffer("cos_table", freqs.cos(), persistent=False)  # [table_len, dim / 2]
        self.register_buffer("sin_table", freqs.sin(), persistent=False)

    def reserve_positions(self, num_positions: int) -> None:
        """Grow the table to cover positions < num_positions (e.g. a session_len past max_position_embeddings).
        Host-side; call before capturing CUDA graphs. Dynamic NTK needs none: it computes those tokens itself."""
        if self.rope_type != "dynamic" and num_positions > self.cos_table.shape[0]:
            self._build_table(num_positions)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, dim / 2] fp32 for the positions [T] of this step's tokens."""
        table_len = self.cos_table.shape[0]
        # dynamic tokens past the table are overwritten below; clamp only keeps their gather in bounds
        idx = positions.clamp(max=table_len - 1) if self.rope_type == "dynamic" else positions
        cos, sin = self.cos_table[idx].float(), self.sin_table[idx].float()
        if self.rope_type != "dynamic":
            return cos, sin
        seq_len = get_forward_context().token_seq_lens.to(positions.device)
        length = torch.clamp(seq_len, min=self.max_position_embeddings).float()
        dim, factor = self.head_dim, self.factor
        base = self.base * ((factor * length / self.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        angles = positions[:, None].float() * _inv_freq(base, dim)
        beyond = (seq_len > self.max_position_embeddings)[:, None]
        return torch.where(beyond, angles.cos(), cos), torch.where(beyond, angles.sin(), sin)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, Hq, D] and k [T, Hkv, D] for `positions` [T]."""
        cos, sin = self.cos_sin(positions)
        return apply_rotary(q, k, cos, sin)


def get_rope(config: Any, head_dim: int) -> RotaryEmbedding:
    theta, scaling = rope_config(config)
    max_pos = int(getattr(config, "max_position_embeddings", None) or 2048)
    return RotaryEmbedding(head_dim, max_pos, theta, scaling)
