"""Qwen2 / Qwen2.5 (the language model of most InternVL2.5 / InternVL3 checkpoints): the Llama decoder with a bias
on q, k and v (none on o or the MLP). Checkpoint names are Llama's."""

from __future__ import annotations

from typing import Any

from interndeploy.models.llama import DecoderSpec, LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        if getattr(config, "use_sliding_window", False):
            raise ValueError("Qwen2 with use_sliding_window=true is not supported (no sliding-window attention)")
        return DecoderSpec.from_config(config, attention_bias=True, mlp_bias=False, o_proj_bias=False)
