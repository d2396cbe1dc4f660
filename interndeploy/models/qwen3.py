"""Qwen3 (the language model of Intern-S1-mini): the Llama decoder with a per-head RMSNorm on q and k.

    q = q_norm(q_proj(x) viewed [T, Hq, D]),  k = k_norm(k_proj(x) viewed [T, Hkv, D]),  then RoPE

q_norm / k_norm weights are [head_dim], shared by all heads. `attention_bias` puts a bias on q, k, v and
o; the MLP has none. Checkpoint names are Llama's plus `self_attn.q_norm` / `self_attn.k_norm`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from interndeploy.layers.layernorm import RMSNorm
from interndeploy.models.llama import DecoderSpec, LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM


class Qwen3Attention(LlamaAttention):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__(spec)
        self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)
        self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # as rows of head_dim, [T * heads, D]: the shape every RMSNorm kernel takes
        q = self.q_norm(q.reshape(-1, q.shape[-1])).view(q.shape)
        k = self.k_norm(k.reshape(-1, k.shape[-1])).view(k.shape)
        return q, k


class Qwen3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        if getattr(config, "use_sliding_window", False):
            raise ValueError("Qwen3 with use_sliding_window=true is not supported (no sliding-window attention)")
        return DecoderSpec.from_config(
            config, attention_bias=bool(getattr(config, "attention_bias", False)), mlp_bias=False
        )

    def make_layer(self, layer_idx: int, mlp: nn.Module | None = None) -> nn.Module:
        return LlamaDecoderLayer(self.spec, Qwen3Attention(self.spec), mlp)
