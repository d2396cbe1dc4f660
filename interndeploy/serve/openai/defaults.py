"""Sampling defaults of the server: the model card's recommendation, overridden by generation_config.json.

A request's own fields always win over these (see generation.py). Recommended values (shared/FORMATS.md,
"Recommended sampling"): Intern-S1 top_p 1.0, top_k 50, min_p 0.0, temperature 0.7; Intern-S1-mini the same with
temperature 0.8; Intern-S1-Pro top_p 0.95, top_k 50, min_p 0.0, temperature 0.8. Other models get
GenerationConfig's defaults (LMDeploy's) under what their generation_config.json sets.
"""

from __future__ import annotations

from typing import Any

from ...config import GenerationConfig
from ...model_dir import ModelInfo

RECOMMENDED: dict[str, dict[str, float]] = {
    "intern-s1": {"top_p": 1.0, "top_k": 50, "min_p": 0.0, "temperature": 0.7},
    "intern-s1-mini": {"top_p": 1.0, "top_k": 50, "min_p": 0.0, "temperature": 0.8},
    "intern-s1-pro": {"top_p": 0.95, "top_k": 50, "min_p": 0.0, "temperature": 0.8},
}
# generation_config.json keys that override the recommendation
_GEN_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _squash(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def intern_s1_variant(config: dict[str, Any], names: list[str]) -> str | None:
    """Which Intern-S1 model this is ("intern-s1", "intern-s1-mini", "intern-s1-pro") or None.

    Names (the model path, --model-name) are checked first because they tell mini from the full model; then
    config.json: an InternS1 architecture or model_type, Pro if it says so, mini when its language model is a
    dense Qwen3 (the full Intern-S1 is a Qwen3 MoE).
    """
    for name in names:
        squashed = _squash(name.rstrip("/").rsplit("/", 1)[-1])
        if "interns1pro" in squashed:
            return "intern-s1-pro"
        if "interns1mini" in squashed:
            return "intern-s1-mini"
        if "interns1" in squashed:
            return "intern-s1"
    archs = " ".join(config.get("architectures") or [])
    model_type = _squash(str(config.get("model_type") or ""))
    if "InternS1" not in archs and not model_type.startswith("interns1"):
        return None
    if "Pro" in archs or "pro" in model_type:
        return "intern-s1-pro"
    text_type = (config.get("text_config") or {}).get("model_type")
    return "intern-s1-mini" if text_type == "qwen3" else "intern-s1"


def server_gen_defaults(info: ModelInfo, model_name: str | None = None) -> GenerationConfig:
    """The GenerationConfig a request starts from (sampling on; a request's temperature 0 makes it greedy)."""
    names = [n for n in (model_name, info.name, str(info.path)) if n]
    variant = intern_s1_variant(info.root_config or info.config, names)
    values: dict[str, Any] = dict(RECOMMENDED.get(variant, {})) if variant else {}
    gen = info.generation_config
    values.update({k: gen[k] for k in _GEN_KEYS if gen.get(k) is not None})
    return GenerationConfig(do_sample=True, **values)
