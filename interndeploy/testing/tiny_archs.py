"""Tiny InternLM3 / Qwen3 / Qwen3-MoE directories, FP8 and multimodal variants of them, and their references.

Directories look like the real checkpoints (config.json fields and tensor names of InternLM3-8B-Instruct,
Qwen3-8B / Intern-S1-mini's language model, Qwen3-235B-A22B / Intern-S1's), with random weights and the
trained BPE tokenizer of `tiny_models`. On top of any of them:

    quantize_dir_fp8      every linear weight -> float8_e4m3fn + weight_scale_inv [N / bn, K / bk]
                          (router, norms, embeddings, LM head untouched), quantization_config fp8
    wrap_as_multimodal    the same weights inside an InternS1ForConditionalGeneration (model.language_model.*)
                          or InternVLChatModel (language_model.*) checkpoint with a tiny vision tower (tiny_vlm)

`hf_reference(model_dir)` is transformers' own class for the directory (Llama for InternLM3, with zero
biases where a layer has none) holding its weights in fp32, FP8 ones dequantized.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interndeploy.kernels.reference_fp8 import block_dequant, quantize_weight_block_fp8
from interndeploy.testing.tiny_models import INTERNLM2_CHAT_TEMPLATE, _build_dir, _write_json

_COMMON = {"hidden_act": "silu", "initializer_range": 0.02, "attention_dropout": 0.0, "use_cache": True}


def _decoder_shapes(c: dict[str, Any], *, qkv_bias: bool, o_bias: bool, mlp_bias: bool, qk_norm: bool):
    """Llama-named tensors of a decoder; experts for the layers a Qwen3-MoE config makes sparse."""
    h, v = c["hidden_size"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    d = c.get("head_dim") or h // heads
    num_experts = c.get("num_experts", 0)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, out, inp, bias in (
            ("q_proj", heads * d, h, qkv_bias),
            ("k_proj", kv * d, h, qkv_bias),
            ("v_proj", kv * d, h, qkv_bias),
            ("o_proj", h, heads * d, o_bias),
        ):
            shapes[f"{p}self_attn.{proj}.weight"] = (out, inp)
            if bias:
                shapes[f"{p}self_attn.{proj}.bias"] = (out,)
        if qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (d,)
            shapes[p + "self_attn.k_norm.weight"] = (d,)
        sparse = num_experts and i not in c.get("mlp_only_layers", []) and (i + 1) % c["decoder_sparse_step"] == 0
        if sparse:
            inter = c["moe_intermediate_size"]
            shapes[p + "mlp.gate.weight"] = (num_experts, h)
            for e in range(num_experts):
                for proj, out, inp in (("gate_proj", inter, h), ("up_proj", inter, h), ("down_proj", h, inter)):
                    shapes[f"{p}mlp.experts.{e}.{proj}.weight"] = (out, inp)
        else:
            inter = c["intermediate_size"]
            for proj, out, inp in (("gate_proj", inter, h), ("up_proj", inter, h), ("down_proj", h, inter)):
                shapes[f"{p}mlp.{proj}.weight"] = (out, inp)
                if mlp_bias:
                    shapes[f"{p}mlp.{proj}.bias"] = (out,)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def _build(out_dir: Path, config: dict[str, Any], shapes_fn: Any, **kw: Any) -> Path:
    defaults = {"vocab_size": None, "tokenizer": "bpe", "chat_template": INTERNLM2_CHAT_TEMPLATE,
                "eos_token_id": None, "seed": 0, "num_shards": 2, "torch_dtype": "float32",
                "weights_format": "safetensors"}  # fmt: skip
    return _build_dir(out_dir, config=config, shapes_fn=shapes_fn, **{**defaults, **kw})


def build_internlm3_dir(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    qkv_bias: bool = False,
    bias: bool = False,
    max_position_embeddings: int = 2048,
    rope_theta: float = 50000000.0,
    rope_scaling: dict[str, Any] | None = None,
    rms_norm_eps: float = 1e-5,
    **kw: Any,
) -> Path:
    """An InternLM3 directory as published (remote-code auto_map; head_dim, qkv_bias, bias, dynamic rope)."""
    config = {
        "architectures": ["InternLM3ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_internlm3.InternLM3Config",
            "AutoModel": "modeling_internlm3.InternLM3Model",
            "AutoModelForCausalLM": "modeling_internlm3.InternLM3ForCausalLM",
        },
        "model_type": "internlm3",
        **_COMMON,
        "bias": bias,
        "qkv_bias": qkv_bias,
        "head_dim": head_dim,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "rms_norm_eps": rms_norm_eps,
        "rope_scaling": rope_scaling if rope_scaling is not None else {"factor": 6.0, "rope_type": "dynamic"},
        "rope_theta": rope_theta,
        "tie_word_embeddings": False,
    }

    def shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return _decoder_shapes(c, qkv_bias=c["qkv_bias"], o_bias=c["bias"], mlp_bias=c["bias"], qk_norm=False)

    return _build(out_dir, config, shapes, **kw)


def _qwen3_config(
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    head_dim: int,
    attention_bias: bool,
    tie_word_embeddings: bool,
    max_position_embeddings: int,
    rope_theta: float,
    rms_norm_eps: float,
) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **_COMMON,
        "attention_bias": attention_bias,
        "head_dim": head_dim,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "rms_norm_eps": rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": tie_word_embeddings,
        "use_sliding_window": False,
    }


def _qwen3_shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    bias = c["attention_bias"]
    return _decoder_shapes(c, qkv_bias=bias, o_bias=bias, mlp_bias=False, qk_norm=True)


def build_qwen3_dir(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    attention_bias: bool = False,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 2048,
    rope_theta: float = 1000000.0,
    rms_norm_eps: float = 1e-6,
    **kw: Any,
) -> Path:
    """A Qwen3 directory (Intern-S1-mini's language model at toy size; head_dim independent of hidden_size)."""
    config = _qwen3_config(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
                           num_key_value_heads, head_dim, attention_bias, tie_word_embeddings,
                           max_position_embeddings, rope_theta, rms_norm_eps)  # fmt: skip
    return _build(out_dir, config, _qwen3_shapes, **kw)


def build_qwen3_moe_dir(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    moe_intermediate_size: int = 32,
    num_experts: int = 8,
    num_experts_per_tok: int = 2,
    norm_topk_prob: bool = True,
    decoder_sparse_step: int = 1,
    mlp_only_layers: list[int] | None = None,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    max_position_embeddings: int = 2048,
    rope_theta: float = 1000000.0,
    rms_norm_eps: float = 1e-6,
    **kw: Any,
) -> Path:
    """A Qwen3-MoE directory (Intern-S1's language model at toy size): experts named one by one."""
    config = _qwen3_config(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
                           num_key_value_heads, head_dim, False, False, max_position_embeddings, rope_theta,
                           rms_norm_eps)  # fmt: skip
    config.update(
        architectures=["Qwen3MoeForCausalLM"],
        model_type="qwen3_moe",
        decoder_sparse_step=decoder_sparse_step,
        mlp_only_layers=list(mlp_only_layers or []),
        moe_intermediate_size=moe_intermediate_size,
        norm_topk_prob=norm_topk_prob,
        num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok,
        output_router_logits=False,
        router_aux_loss_coef=0.001,
    )
    return _build(out_dir, config, _qwen3_shapes, **kw)


# --- FP8 and multimodal variants ----------------------------------------------------------------

_QUANTIZED = re.compile(r"\.(self_attn\.[qkvo]_proj|mlp\.(experts\.\d+\.)?(gate|up|down)_proj)\.weight$")


def _rewrite_checkpoint(model_dir: Path, out_dir: Path, transform: Any) -> None:
    """Write every safetensors shard of model_dir into out_dir through transform(name, tensor) -> {name: t}."""
    weight_map: dict[str, str] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        out: dict[str, torch.Tensor] = {}
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                out.update(transform(name, f.get_tensor(name)))
        save_file(out, str(out_dir / path.name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, path.name))
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        total = sum(t.numel() * t.element_size() for t in _load_all(out_dir).values())
        _write_json(out_dir / index.name, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _load_all(model_dir: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            state.update({n: f.get_tensor(n) for n in f.keys()})
    return state


def _copy_side_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not path.name.startswith("model") and path.name != "config.json":
            shutil.copy(path, dst / path.name)


def quantize_dir_fp8(model_dir: Path, out_dir: Path, block: tuple[int, int] = (16, 16)) -> Path:
    """A copy of a tiny safetensors directory with its linear weights quantized to block-wise FP8."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _copy_side_files(model_dir, out_dir)

    def quantize(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if not _QUANTIZED.search(name):
            return {name: tensor}
        q, s = quantize_weight_block_fp8(tensor, block)
        return {name: q, name + "_scale_inv": s}

    _rewrite_checkpoint(model_dir, out_dir, quantize)
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": list(block)}  # fmt: skip
    _write_json(out_dir / "config.json", config)
    return out_dir


MultimodalKind = Literal["interns1", "internvl"]


def wrap_as_multimodal(
    model_dir: Path, out_dir: Path, kind: MultimodalKind = "interns1", **vision: Any
) -> Path:
    """The language model of `model_dir` inside a multimodal checkpoint, as Intern-S1 (HF layout) or InternVL
    (remote-code layout) publish it, with a tiny random vision tower and projector (tiny_vlm; `vision` sets its
    sizes, qk_norm, norm_type) and the image tokens in the tokenizer. The language config keeps no
    `architectures` for interns1 (found from its model_type) and its quantization_config moves up."""
    from interndeploy.testing.tiny_vlm import TILE, retrain_tokenizer_with_image_tokens, vision_config, vision_tensors

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _copy_side_files(model_dir, out_dir)
    retrain_tokenizer_with_image_tokens(out_dir)
    lm = json.loads((model_dir / "config.json").read_text())
    qc = lm.pop("quantization_config", None)
    if kind not in ("interns1", "internvl"):
        raise ValueError(f"kind must be interns1 or internvl, got {kind!r}")
    vis = vision_config(kind, **vision)
    extra = vision_tensors(kind, vis, lm["hidden_size"])
    if kind == "interns1":
        lm.pop("architectures", None)
        config = {"architectures": ["InternS1ForConditionalGeneration"], "model_type": "interns1",
                  "text_config": lm, "vision_config": vis, "torch_dtype": lm.get("torch_dtype"),
                  "downsample_ratio": 0.5, "projector_hidden_act": "gelu", "vision_feature_layer": -1,
                  "vision_feature_select_strategy": "default", "image_seq_length": 4}  # fmt: skip
        _write_json(out_dir / "preprocessor_config.json", {
            "image_processor_type": "GotOcr2ImageProcessor", "crop_to_patches": True, "min_patches": 1,
            "max_patches": 6, "size": {"height": TILE, "width": TILE}, "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225], "resample": 3, "do_rescale": True, "do_normalize": True})

        def rename(name: str) -> str:
            return "model.language_model." + name.removeprefix("model.") if name.startswith("model.") else name
    else:
        config = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "llm_config": lm,
                  "vision_config": vis, "torch_dtype": lm.get("torch_dtype"), "downsample_ratio": 0.5,
                  "select_layer": -1, "ps_version": "v2", "template": "internlm2-chat", "force_image_size": TILE,
                  "max_dynamic_patch": 6, "min_dynamic_patch": 1, "use_thumbnail": True,
                  "dynamic_image_size": True}  # fmt: skip

        def rename(name: str) -> str:
            return "language_model." + name
    if qc is not None:
        config["quantization_config"] = qc
    _rewrite_checkpoint(model_dir, out_dir, lambda name, t: {rename(name): t})
    save_file(extra, str(out_dir / "vision.safetensors"), metadata={"format": "pt"})
    index = out_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"].update(dict.fromkeys(extra, "vision.safetensors"))
        _write_json(index, data)
    _write_json(out_dir / "config.json", config)
    return out_dir


# --- transformers references ---------------------------------------------------------------------


def _dequantized_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """The directory's tensors in fp32, FP8 weights multiplied out by their block scales."""
    state = _load_all(model_dir)
    qc = json.loads((model_dir / "config.json").read_text()).get("quantization_config") or {}
    block = tuple(qc.get("weight_block_size") or (0, 0))
    out = {}
    for name, tensor in state.items():
        if name.endswith("_scale_inv"):
            continue
        scale = state.get(name + "_scale_inv")
        out[name] = block_dequant(tensor, scale, block) if scale is not None else tensor.float()
    return out


def _stack_experts(state: dict[str, torch.Tensor], num_experts: int) -> dict[str, torch.Tensor]:
    """Per-expert tensors as transformers 5 holds them: experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]."""
    out = {n: t for n, t in state.items() if ".mlp.experts." not in n}
    layers = {n.split(".mlp.experts.")[0] for n in state if ".mlp.experts." in n}
    for layer in layers:
        p = f"{layer}.mlp.experts"
        gate_up = [torch.cat([state[f"{p}.{e}.gate_proj.weight"], state[f"{p}.{e}.up_proj.weight"]])
                   for e in range(num_experts)]  # fmt: skip
        out[f"{p}.gate_up_proj"] = torch.stack(gate_up)
        out[f"{p}.down_proj"] = torch.stack([state[f"{p}.{e}.down_proj.weight"] for e in range(num_experts)])
    return out


def hf_reference(model_dir: Path) -> Any:
    """transformers' class for an InternLM3 / Qwen3 / Qwen3-MoE directory, with its weights (fp32, eval, eager)."""
    import transformers

    model_dir = Path(model_dir)
    c = json.loads((model_dir / "config.json").read_text())
    arch = (c.get("architectures") or [""])[0]
    fields = {k: v for k, v in c.items() if k not in ("architectures", "auto_map", "model_type", "torch_dtype",
                                                       "quantization_config")}  # fmt: skip
    state = _dequantized_state(model_dir)
    if arch == "InternLM3ForCausalLM":
        # Llama puts attention_bias on q, k, v and o alike: take the union and zero the biases InternLM3 lacks
        qkv_bias, bias = fields.pop("qkv_bias"), fields.pop("bias")
        config = transformers.LlamaConfig(**fields, attention_bias=qkv_bias or bias, mlp_bias=bias)
        cls = transformers.LlamaForCausalLM
    elif arch == "Qwen3ForCausalLM":
        config, cls = transformers.Qwen3Config(**fields), transformers.Qwen3ForCausalLM
    elif arch == "Qwen3MoeForCausalLM":
        config, cls = transformers.Qwen3MoeConfig(**fields), transformers.Qwen3MoeForCausalLM
        state = _stack_experts(state, c["num_experts"])
    else:
        raise ValueError(f"no transformers reference here for {arch!r}")
    config._attn_implementation = "eager"
    model = cls(config)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state and name.endswith(".bias"):
            state[name] = torch.zeros_like(tensor)  # a bias the checkpoint's layer does not have
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"reference model load of {model_dir}: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.float().eval()
