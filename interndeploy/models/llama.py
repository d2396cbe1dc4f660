"""Llama decoder: the architecture InternLM2 shares (pre-norm, GQA attention with RoPE, SwiGLU MLP).

    embed_tokens -> N x [input_layernorm -> self_attn (qkv_proj, rope, paged attention, o_proj)
                         post_attention_layernorm -> mlp (gate_up_proj, silu*mul, down_proj)] -> norm -> lm_head

The residual stream travels beside the hidden states so each RMSNorm fuses the residual add.
Variants (InternLM2/3, Qwen3, Qwen3-MoE) override `decoder_spec` and `make_layer` (their own attention
or MLP module in a layer) and, for other checkpoint names, `remap_checkpoint_name`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from interndeploy.layers.activation import SiluAndMul
from interndeploy.layers.attention import Attention
from interndeploy.layers.embedding import LMHead, VocabEmbedding
from interndeploy.layers.layernorm import RMSNorm
from interndeploy.layers.linear import MergedColumnLinear, QKVLinear, RowLinear
from interndeploy.layers.rotary import apply_rotary, get_rope


@dataclass(frozen=True, slots=True)
class DecoderSpec:
    """The sizes and switches of a Llama-style decoder, read from whichever config names them."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    attention_bias: bool  # bias on q, k, v (and o unless o_proj_bias says otherwise)
    mlp_bias: bool  # bias on gate, up and down
    tie_word_embeddings: bool
    o_proj_bias: bool | None = None  # bias on o; None: as attention_bias (resolved when the spec is made)

    def __post_init__(self) -> None:
        if self.o_proj_bias is None:
            object.__setattr__(self, "o_proj_bias", self.attention_bias)

    @classmethod
    def from_config(
        cls, config: Any, *, attention_bias: bool, mlp_bias: bool, o_proj_bias: bool | None = None
    ) -> DecoderSpec:
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (only silu)")
        num_heads = config.num_attention_heads
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // num_heads,
            rms_norm_eps=getattr(config, "rms_norm_eps", 1e-6),
            attention_bias=attention_bias,
            mlp_bias=mlp_bias,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            o_proj_bias=o_proj_bias,
        )


class LlamaAttention(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.qkv_proj = QKVLinear(
            spec.hidden_size, spec.head_dim, spec.num_heads, spec.num_kv_heads, bias=spec.attention_bias
        )
        self.o_proj = RowLinear(spec.num_heads * spec.head_dim, spec.hidden_size, bias=spec.o_proj_bias)
        heads, kv_heads, head_dim = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, spec.head_dim
        self.split = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
        self.attn = Attention(heads, head_dim, head_dim**-0.5, kv_heads)

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k [T, Hkv, D] before the rotation: unchanged here, per-head RMSNorm in Qwen3."""
        return q, k

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.split, dim=-1)
        attn = self.attn
        q, k = self.norm_qk(q.view(-1, attn.num_heads, attn.head_dim), k.view(-1, attn.num_kv_heads, attn.head_dim))
        q, k = apply_rotary(q, k, cos, sin)
        return self.o_proj(attn(q.flatten(1), k.flatten(1), v))


class LlamaMLP(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        size = spec.intermediate_size
        self.gate_up_proj = MergedColumnLinear(spec.hidden_size, [size, size], bias=spec.mlp_bias)
        self.down_proj = RowLinear(size, spec.hidden_size, bias=spec.mlp_bias)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, self_attn: nn.Module | None = None, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = self_attn if self_attn is not None else LlamaAttention(spec)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = mlp if mlp is not None else LlamaMLP(spec)

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sub-layer output, residual stream before it is added); the next norm adds the two."""
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, cos, sin)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, spec: DecoderSpec, config: Any, make_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(spec.vocab_size, spec.hidden_size)
        self.rotary_emb = get_rope(config, spec.head_dim)
        make_layer = make_layer or (lambda _: LlamaDecoderLayer(spec))
        self.layers = nn.ModuleList(make_layer(i) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, input_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
        # one cos/sin for all layers: the angles depend only on positions (and sequence lengths)
        cos, sin = self.rotary_emb.cos_sin(positions)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, cos, sin)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    # checkpoint module name -> (our packed module, shard id)
    packed_modules_mapping: ClassVar[dict[str, tuple[str, str | int]]] = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.spec = self.decoder_spec(config)
        self.model = LlamaModel(self.spec, config, self.make_layer)
        self.lm_head = LMHead(self.spec.vocab_size, self.spec.hidden_size)
        if self.spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        return DecoderSpec.from_config(
            config,
            attention_bias=bool(getattr(config, "attention_bias", False)),
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
        )

    def make_layer(self, layer_idx: int) -> nn.Module:
        """Decoder layer `layer_idx` (called while building, after `self.spec` and `self.config` are set)."""
        return LlamaDecoderLayer(self.spec)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, input_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids, positions [T] (all scheduled tokens, flattened) -> hidden [T, H]. `input_embeds` [T, H]
        replaces the embedding of input_ids (a prompt with images: vision features at their positions)."""
        return self.model(input_ids, positions, input_embeds)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> their input embeddings [T, H]."""
        return self.model.embed_tokens(input_ids)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] (only the rows that need logits) -> logits [N, V] fp32."""
        return self.lm_head(hidden)
