"""Where AWQ smooths and quantizes, per architecture, in the checkpoint's own tensor names.

`auto_awq` writes the checkpoint it read with each decoder linear replaced by its int4 tensors, so the
tables here name checkpoint modules (relative to the layer prefix), and say which of our model's linear
layers sees the same input (that is where calibration hooks the activations):

    InternLM2                                        Llama (and InternLM3-shaped Llama checkpoints)
    attention_norm  -> attention.wqkv                input_layernorm          -> q_proj, k_proj, v_proj
    ffn_norm        -> feed_forward.w1, w3           post_attention_layernorm -> gate_proj, up_proj
    feed_forward.w3 -> feed_forward.w2               mlp.up_proj              -> down_proj
    wqkv (v rows)   -> attention.wo                  v_proj                   -> o_proj

The producer of a smoothed channel is divided by its scale: a norm's weight, or rows of a linear (with
their bias). With grouped-query attention one v channel feeds the o_proj inputs of every q head of its
group, so that group's scales live on the v channels and are repeated over the q heads for o_proj.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class SmoothGroup:
    prev: str  # checkpoint module producing the input channels: a norm, or a linear whose rows are scaled
    fcs: tuple[str, ...]  # checkpoint linears reading those channels
    inputs: str  # our module (relative to the decoder layer) whose input is the fcs' input
    prev_rows: torch.Tensor | None = None  # rows of prev that produce the channels, in order (None: all)
    gqa_repeat: int = 1  # >1: the fcs' input is [heads, head_dim] and channel (h, d) comes from v channel (h // r, d)
    head_dim: int = 0


@dataclass(frozen=True, slots=True)
class AWQLayout:
    layer_prefix: str  # checkpoint prefix of decoder layer i, with {i}
    groups: tuple[SmoothGroup, ...]
    inputs: dict[str, str]  # every quantized checkpoint linear -> our module whose input it reads
    no_clip: tuple[str, ...]  # linears whose outputs feed q.k (AWQ does not clip them)

    def prefix(self, i: int) -> str:
        return self.layer_prefix.format(i=i)


def _geometry(config: dict[str, Any]) -> tuple[int, int, int]:
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return heads, kv, head_dim


def _internlm2(config: dict[str, Any]) -> AWQLayout:
    heads, kv, d = _geometry(config)
    per_kv = heads // kv

    # grouped wqkv rows: [kv, per_kv q heads + k + v, head_dim]; the v head of group g is slot per_kv + 1
    v_rows = torch.arange(kv * (per_kv + 2) * d).view(kv, per_kv + 2, d)[:, per_kv + 1].flatten()

    return AWQLayout(
        layer_prefix="model.layers.{i}.",
        groups=(
            SmoothGroup("attention_norm", ("attention.wqkv",), "self_attn.qkv_proj"),
            SmoothGroup("ffn_norm", ("feed_forward.w1", "feed_forward.w3"), "mlp.gate_up_proj"),
            SmoothGroup("feed_forward.w3", ("feed_forward.w2",), "mlp.down_proj"),
            SmoothGroup("attention.wqkv", ("attention.wo",), "self_attn.o_proj", v_rows, per_kv, d),
        ),
        inputs={
            "attention.wqkv": "self_attn.qkv_proj",
            "attention.wo": "self_attn.o_proj",
            "feed_forward.w1": "mlp.gate_up_proj",
            "feed_forward.w3": "mlp.gate_up_proj",
            "feed_forward.w2": "mlp.down_proj",
        },
        no_clip=("attention.wqkv",),
    )


def _llama(config: dict[str, Any]) -> AWQLayout:
    heads, kv, d = _geometry(config)
    qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    return AWQLayout(
        layer_prefix="model.layers.{i}.",
        groups=(
            SmoothGroup("input_layernorm", qkv, "self_attn.qkv_proj"),
            SmoothGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp.gate_up_proj"),
            SmoothGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
            SmoothGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", None, heads // kv, d),
        ),
        inputs={
            **dict.fromkeys(qkv, "self_attn.qkv_proj"),
            "self_attn.o_proj": "self_attn.o_proj",
            "mlp.gate_proj": "mlp.gate_up_proj",
            "mlp.up_proj": "mlp.gate_up_proj",
            "mlp.down_proj": "mlp.down_proj",
        },
        no_clip=("self_attn.q_proj", "self_attn.k_proj"),
    )


_LAYOUTS: dict[str, Callable[[dict[str, Any]], AWQLayout]] = {
    "InternLM2ForCausalLM": _internlm2,
    "LlamaForCausalLM": _llama,
}


def awq_layout(config: dict[str, Any]) -> AWQLayout:
    for arch in config.get("architectures") or []:
        if arch in _LAYOUTS:
            return _LAYOUTS[arch](config)
    named = ", ".join(config.get("architectures") or []) or "(none listed)"
    raise ValueError(f"auto_awq does not support architecture {named} yet; supported: {', '.join(sorted(_LAYOUTS))}")
