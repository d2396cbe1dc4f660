"""InternLM3 (InternLM3-8B-Instruct): the Llama decoder under Llama's checkpoint names.

What differs from Llama is in config.json: `qkv_bias` puts a bias on q, k and v; `bias` on o_proj and
on gate, up and down; `head_dim` is explicit; rope_scaling is dynamic NTK ({"rope_type": "dynamic",
"factor": 6.0} in the released model), which the shared rotary embedding implements.
"""

from __future__ import annotations

from typing import Any

from interndeploy.models.llama import DecoderSpec, LlamaForCausalLM


class InternLM3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        bias = bool(getattr(config, "bias", False))
        return DecoderSpec.from_config(
            config, attention_bias=bool(getattr(config, "qkv_bias", False)), mlp_bias=bias, o_proj_bias=bias
        )
