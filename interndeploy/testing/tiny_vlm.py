"""Tiny vision towers for the multimodal test checkpoints, and transformers' InternVL as their reference.

`vision_tensors(kind, ...)` makes a random InternViT + projector at toy size (56 px tiles of 14 px patches: 4 image
tokens per tile) under the names the checkpoint kind uses: HF (`model.vision_tower.*`,
`model.multi_modal_projector.*`, Intern-S1 / InternVLForConditionalGeneration) or remote-code InternVLChatModel
(`vision_model.*` with a fused qkv, `mlp1.*`). `wrap_as_multimodal` (tiny_archs) writes them beside the language
model together with a tokenizer that has <img>, </img>, <IMG_CONTEXT> and <video>.

`hf_vlm_reference(vlm_dir, text_reference)` is transformers' InternVLForConditionalGeneration holding the
directory's vision weights (converted to HF names when needed) and the given text model's weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<video>")
TILE, PATCH = 56, 14


def vision_config(
    kind: str, *, hidden: int = 32, layers: int = 2, heads: int = 4, intermediate: int = 64, qk_norm: bool = False,
    norm_type: str = "layer_norm", bias: bool = True,
) -> dict[str, Any]:
    """The vision_config section of a tiny checkpoint of `kind` (interns1 / internvl_hf: HF names; internvl)."""
    if kind == "internvl":
        return {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": hidden,
                "num_attention_heads": heads, "intermediate_size": intermediate, "num_hidden_layers": layers,
                "image_size": TILE, "patch_size": PATCH, "qkv_bias": bias, "qk_normalization": qk_norm,
                "norm_type": norm_type, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "num_channels": 3}  # fmt: skip
    return {"model_type": "interns1_vision" if kind == "interns1" else "internvl_vision", "hidden_size": hidden,
            "num_attention_heads": heads, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "image_size": [TILE, TILE], "patch_size": [PATCH, PATCH], "attention_bias": bias, "use_qk_norm": qk_norm,
            "norm_type": norm_type, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "layer_scale_init_value": 0.1,
            "use_mean_pooling": True, "num_channels": 3}  # fmt: skip


def _hf_vision_shapes(v: dict[str, Any], text_hidden: int) -> dict[str, tuple[int, ...]]:
    c, inter, n = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    bias = v.get("attention_bias", v.get("qkv_bias"))
    qk = v.get("use_qk_norm", v.get("qk_normalization"))
    patches = (TILE // PATCH) ** 2
    s = {"vision_tower.embeddings.cls_token": (1, 1, c),
         "vision_tower.embeddings.patch_embeddings.projection.weight": (c, 3, PATCH, PATCH),
         "vision_tower.embeddings.patch_embeddings.projection.bias": (c,),
         "vision_tower.embeddings.position_embeddings": (1, patches + 1, c)}  # fmt: skip
    for i in range(n):
        p = f"vision_tower.encoder.layer.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            s[f"{p}attention.{proj}.weight"] = (c, c)
            if bias:
                s[f"{p}attention.{proj}.bias"] = (c,)
        s[f"{p}attention.projection_layer.weight"], s[f"{p}attention.projection_layer.bias"] = (c, c), (c,)
        if qk:
            s[f"{p}attention.q_norm.weight"], s[f"{p}attention.k_norm.weight"] = (c,), (c,)
        for norm in ("layernorm_before", "layernorm_after"):
            s[f"{p}{norm}.weight"] = (c,)
            if v["norm_type"] == "layer_norm":
                s[f"{p}{norm}.bias"] = (c,)
        s[f"{p}lambda_1"], s[f"{p}lambda_2"] = (c,), (c,)
        s[f"{p}mlp.fc1.weight"], s[f"{p}mlp.fc1.bias"] = (inter, c), (inter,)
        s[f"{p}mlp.fc2.weight"], s[f"{p}mlp.fc2.bias"] = (c, inter), (c,)
    width = 4 * c
    s.update({"multi_modal_projector.layer_norm.weight": (width,), "multi_modal_projector.layer_norm.bias": (width,),
              "multi_modal_projector.linear_1.weight": (text_hidden, width),
              "multi_modal_projector.linear_1.bias": (text_hidden,),
              "multi_modal_projector.linear_2.weight": (text_hidden, text_hidden),
              "multi_modal_projector.linear_2.bias": (text_hidden,)})  # fmt: skip
    return s


def hf_vision_state(v: dict[str, Any], text_hidden: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random vision tower + projector under HF names (no `model.` prefix): lively, stable features."""
    gen = torch.Generator().manual_seed(seed + 1000)
    out = {}
    for name, shape in _hf_vision_shapes(v, text_hidden).items():
        noise = torch.randn(shape, generator=gen)
        if "norm" in name and name.endswith("weight"):
            out[name] = 1.0 + 0.1 * noise
        elif "lambda" in name:
            out[name] = 0.5 + 0.1 * noise
        else:
            out[name] = 0.1 * noise
    return out


def hf_to_chat_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF vision names -> InternVLChatModel's (q, k, v fused into qkv)."""
    from interndeploy.models.internvit import _hf_to_chat

    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".attention.k_proj." in name or ".attention.v_proj." in name:
            continue
        if ".attention.q_proj." in name:
            parts = [state[name.replace("q_proj", x)] for x in ("q_proj", "k_proj", "v_proj")]
            new = _hf_to_chat(name).replace("q_proj", "qkv")  # type: ignore[union-attr]
            out[new] = torch.cat(parts)
            continue
        out[_hf_to_chat(name)] = tensor  # type: ignore[index]
    return out


def chat_to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """InternVLChatModel vision names -> HF's (the inverse of hf_to_chat_state), for the reference."""
    import re

    rules = [(r"^vision_model\.embeddings\.class_embedding$", "vision_tower.embeddings.cls_token"),
             (r"^vision_model\.embeddings\.patch_embedding\.", "vision_tower.embeddings.patch_embeddings.projection."),
             (r"^vision_model\.embeddings\.position_embedding$", "vision_tower.embeddings.position_embeddings"),
             (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.",
              r"vision_tower.encoder.layer.\1.attention.projection_layer."),
             (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.", r"vision_tower.encoder.layer.\1.attention."),
             (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.", r"vision_tower.encoder.layer.\1.layernorm_before."),
             (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.", r"vision_tower.encoder.layer.\1.layernorm_after."),
             (r"^vision_model\.encoder\.layers\.(\d+)\.ls1$", r"vision_tower.encoder.layer.\1.lambda_1"),
             (r"^vision_model\.encoder\.layers\.(\d+)\.ls2$", r"vision_tower.encoder.layer.\1.lambda_2"),
             (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"vision_tower.encoder.layer.\1.mlp."),
             (r"^mlp1\.0\.", "multi_modal_projector.layer_norm."), (r"^mlp1\.1\.", "multi_modal_projector.linear_1."),
             (r"^mlp1\.3\.", "multi_modal_projector.linear_2.")]  # fmt: skip
    out = {}
    for name, tensor in state.items():
        for pattern, repl in rules:
            if re.match(pattern, name):
                name = re.sub(pattern, repl, name)
                break
        if name.endswith(("attention.qkv.weight", "attention.qkv.bias")):
            for part, x in zip(tensor.chunk(3), ("q_proj", "k_proj", "v_proj"), strict=True):
                out[name.replace("qkv", x)] = part
        else:
            out[name] = tensor
    return out


def vision_tensors(kind: str, v: dict[str, Any], text_hidden: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of a tiny vision side, named as `kind` names them."""
    state = hf_vision_state(v, text_hidden, seed)
    if kind == "internvl":
        return hf_to_chat_state(state)
    return {"model." + n: t for n, t in state.items()}


def retrain_tokenizer_with_image_tokens(model_dir: Path) -> None:
    """The BPE tokenizer of a tiny directory again, with the image tokens as specials (same vocab size)."""
    from interndeploy.testing.tokenizers import train_bpe_tokenizer

    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab = json.loads((model_dir / "tokenizer.json").read_text())
    ids = [*vocab["model"]["vocab"].values(), *(t["id"] for t in vocab.get("added_tokens", []))]
    size = max(ids) + 1
    template = config.get("chat_template")
    train_bpe_tokenizer(model_dir, vocab_size=size, extra_special=IMAGE_TOKENS, chat_template=template)


def read_vision_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    from interndeploy.models.internvit import VISION_PREFIXES

    state = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            state.update({n: f.get_tensor(n) for n in f.keys() if n.startswith(VISION_PREFIXES)})
    return state


def hf_vlm_reference(vlm_dir: Path, text_reference: Any) -> Any:
    """transformers' InternVLForConditionalGeneration with the directory's vision side and `text_reference`'s
    language model (a *ForCausalLM), fp32, eval."""
    import transformers

    root = json.loads((Path(vlm_dir) / "config.json").read_text())
    v = root["vision_config"]
    chat = "llm_config" in root
    fields = dict(hidden_size=v["hidden_size"], num_attention_heads=v["num_attention_heads"],
                  intermediate_size=v["intermediate_size"], num_hidden_layers=v["num_hidden_layers"],
                  image_size=TILE, patch_size=PATCH, norm_type=v["norm_type"], layer_norm_eps=v["layer_norm_eps"],
                  attention_bias=v["qkv_bias"] if chat else v["attention_bias"],
                  use_qk_norm=v["qk_normalization"] if chat else v["use_qk_norm"], use_mean_pooling=True)  # fmt: skip
    tokenizer = json.loads((Path(vlm_dir) / "tokenizer.json").read_text())
    ctx = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<IMG_CONTEXT>")
    text_cfg = text_reference.config
    config = transformers.InternVLConfig(
        vision_config=transformers.InternVLVisionConfig(**fields).to_dict(), text_config=text_cfg.to_dict(),
        image_token_id=ctx, downsample_ratio=root.get("downsample_ratio", 0.5), projector_hidden_act="gelu",
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=bool(getattr(text_cfg, "tie_word_embeddings", False)),
    )  # fmt: skip
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    model = transformers.InternVLForConditionalGeneration(config).float().eval()
    model.model.language_model.load_state_dict(text_reference.model.state_dict())
    model.lm_head.load_state_dict(text_reference.lm_head.state_dict())
    state = read_vision_state(vlm_dir)
    state = chat_to_hf_state(state) if chat else {n.removeprefix("model."): t for n, t in state.items()}
    missing, unexpected = model.model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.startswith("language_model.")]
    if missing or unexpected:
        raise ValueError(f"vision reference load: missing {missing}, unexpected {unexpected}")
    return model.float().eval()
