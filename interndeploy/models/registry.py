"""Architecture name (config.json "architectures") -> model class."""

from __future__ import annotations

from torch import nn

import interndeploy.quant.fp8  # noqa: F401  (registers the fp8 weight format with quant/formats.py)
from interndeploy.models.internlm2 import InternLM2ForCausalLM
from interndeploy.models.internlm3 import InternLM3ForCausalLM
from interndeploy.models.llama import LlamaForCausalLM
from interndeploy.models.qwen2 import Qwen2ForCausalLM
from interndeploy.models.qwen3 import Qwen3ForCausalLM
from interndeploy.models.qwen3_moe import Qwen3MoeForCausalLM

_MODELS: dict[str, type[nn.Module]] = {
    "InternLM2ForCausalLM": InternLM2ForCausalLM,
    "InternLM3ForCausalLM": InternLM3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
}


class UnsupportedArchitectureError(ValueError):
    pass


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architectures: list[str]) -> type[nn.Module]:
    """The class of the first listed architecture we implement."""
    for arch in architectures or []:
        if arch in _MODELS:
            return _MODELS[arch]
    named = ", ".join(architectures or []) or "(none listed)"
    raise UnsupportedArchitectureError(
        f"architecture {named} is not supported; supported: {', '.join(supported_architectures())}"
    )
