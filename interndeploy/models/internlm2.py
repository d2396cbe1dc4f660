"""InternLM2 / InternLM2.5: the Llama decoder under other checkpoint names, with a grouped packed wqkv.

Checkpoint name              ours
model.tok_embeddings         model.embed_tokens
layers.N.attention.wqkv      layers.N.self_attn.qkv_proj   (grouped layout, reordered on load)
layers.N.attention.wo        layers.N.self_attn.o_proj
layers.N.feed_forward.w1/w3  layers.N.mlp.gate_up_proj     (shards 0 / 1)
layers.N.feed_forward.w2     layers.N.mlp.down_proj
layers.N.attention_norm      layers.N.input_layernorm
layers.N.ffn_norm            layers.N.post_attention_layernorm
output                       lm_head

wqkv rows, viewed as [num_kv_heads, q_per_kv + 2, head_dim]: for each kv group, its q_per_kv q heads,
then its k head, then its v head. `config.bias` puts a bias on wqkv and wo only (the MLP has none).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch
from torch import nn

from interndeploy.layers.linear import QKVLinear
from interndeploy.models.llama import DecoderSpec, LlamaForCausalLM

_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^model\.tok_embeddings\.", "model.embed_tokens."),
        (r"\.attention\.wqkv\.", ".self_attn.qkv_proj."),
        (r"\.attention\.wo\.", ".self_attn.o_proj."),
        (r"\.feed_forward\.w1\.", ".mlp.gate_proj."),
        (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
        (r"\.feed_forward\.w2\.", ".mlp.down_proj."),
        (r"\.attention_norm\.", ".input_layernorm."),
        (r"\.ffn_norm\.", ".post_attention_layernorm."),
        (r"^output\.", "lm_head."),
    ]
]


def load_grouped_wqkv(
    layer: QKVLinear,
    num_heads: int,
    num_kv_heads: int,
    param: nn.Parameter,
    loaded: torch.Tensor,
    shard_id: object = None,
) -> None:
    """Split a grouped wqkv tensor (all heads, unsharded) into q, k, v and hand each to the layer's loader,
    which takes this rank's heads; q heads are grouped by kv head, so rank r gets whole kv groups."""
    if shard_id is not None:
        return layer.weight_loader(param, loaded, shard_id)
    dim = getattr(param, "output_dim", 0)
    q_per_kv = num_heads // num_kv_heads
    grouped = loaded.unflatten(dim, (num_kv_heads, q_per_kv + 2, -1))
    q = grouped.narrow(dim + 1, 0, q_per_kv).flatten(dim, dim + 2)
    k = grouped.select(dim + 1, q_per_kv).flatten(dim, dim + 1)
    v = grouped.select(dim + 1, q_per_kv + 1).flatten(dim, dim + 1)
    for part, sid in ((q, "q"), (k, "k"), (v, "v")):
        layer.weight_loader(param, part, sid)


class InternLM2ForCausalLM(LlamaForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        for layer in self.model.layers:
            qkv = layer.self_attn.qkv_proj
            loader = partial(load_grouped_wqkv, qkv, self.spec.num_heads, self.spec.num_kv_heads)
            for param in qkv.parameters(recurse=False):
                param.weight_loader = loader

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        return DecoderSpec.from_config(config, attention_bias=bool(getattr(config, "bias", False)), mlp_bias=False)

    def remap_checkpoint_name(self, name: str) -> str:
        for pattern, replacement in _RENAMES:
            name = pattern.sub(replacement, name)
        return name
