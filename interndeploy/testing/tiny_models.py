"""Tiny model directories with random weights at real architectures, and their `transformers` reference.

A directory looks like the real thing: config.json (with auto_map for InternLM2), sharded
safetensors + index (or pytorch_model*.bin), generation_config.json and a tokenizer trained on the
spot. Weights are deterministic in `seed`. `hf_reference_model` loads either kind of directory into
transformers' own LlamaForCausalLM (InternLM2's grouped wqkv un-packed into q/k/v).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from interndeploy.testing.tokenizers import train_bpe_tokenizer, train_sentencepiece_tokenizer

INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TokenizerKind = Literal["bpe", "sentencepiece"]
WeightsFormat = Literal["safetensors", "bin"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _write_tokenizer(out_dir: Path, kind: TokenizerKind, chat_template: str | None) -> dict[str, int]:
    """Train the tokenizer into out_dir; return its vocab size and special ids."""
    if kind == "bpe":
        from tokenizers import Tokenizer

        train_bpe_tokenizer(out_dir, chat_template=chat_template)
        tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
        size, to_id = tok.get_vocab_size(), tok.token_to_id
    elif kind == "sentencepiece":
        import sentencepiece as spm

        train_sentencepiece_tokenizer(out_dir, chat_template=chat_template)
        sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
        size, to_id = sp.get_piece_size(), sp.piece_to_id
    else:
        raise ValueError(f"tokenizer must be 'bpe' or 'sentencepiece', got {kind!r}")
    return {"vocab_size": size, "bos": to_id("<s>"), "eos": to_id("</s>"), "im_end": to_id("<|im_end|>")}


def _random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Norm weights near 1, embeddings ~N(0, 1), everything else ~N(0, 0.1^2): lively but stable logits."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        if "norm" in name:
            state[name] = 1.0 + 0.1 * noise
        elif "embed" in name:
            state[name] = noise
        else:
            state[name] = 0.1 * noise
    return state


def _save_weights(
    state: dict[str, torch.Tensor], out_dir: Path, num_shards: int, dtype: torch.dtype, fmt: WeightsFormat
) -> None:
    names = list(state)
    per_shard = -(-len(names) // num_shards)
    groups = [names[i * per_shard : (i + 1) * per_shard] for i in range(num_shards)]
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"{stem}.{ext}" if num_shards == 1 else f"{stem}-{i + 1:05d}-of-{num_shards:05d}.{ext}"
        shard = {n: state[n].to(dtype).contiguous() for n in group}
        if fmt == "safetensors":
            save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        else:
            torch.save(shard, out_dir / fname)
        for n, t in shard.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    if num_shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _build_dir(
    out_dir: Path,
    *,
    config: dict[str, Any],
    shapes_fn: Any,
    vocab_size: int | None,
    tokenizer: TokenizerKind,
    chat_template: str | None,
    eos_token_id: list[int] | None,
    seed: int,
    num_shards: int,
    torch_dtype: str,
    weights_format: WeightsFormat,
) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _write_tokenizer(out_dir, tokenizer, chat_template)
    if vocab_size is None:
        vocab_size = tok["vocab_size"]
    elif vocab_size < tok["vocab_size"]:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {tok['vocab_size']}")
    eos = list(eos_token_id) if eos_token_id is not None else [tok["eos"], tok["im_end"]]
    config = {
        **config,
        "vocab_size": vocab_size,
        "bos_token_id": tok["bos"],
        "eos_token_id": eos[0],
        "pad_token_id": tok["eos"],
        "torch_dtype": torch_dtype,
    }
    _write_json(out_dir / "config.json", config)
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": tok["bos"], "eos_token_id": eos, "pad_token_id": tok["eos"]},
    )
    state = _random_weights(shapes_fn(config), seed)
    _save_weights(state, out_dir, num_shards, _DTYPES[torch_dtype], weights_format)
    return out_dir


def _internlm2_shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    d = h // heads
    shapes: dict[str, tuple[int, ...]] = {"model.tok_embeddings.weight": (v, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "attention.wqkv.weight"] = ((heads + 2 * kv) * d, h)
        if c["bias"]:
            shapes[p + "attention.wqkv.bias"] = ((heads + 2 * kv) * d,)
        shapes[p + "attention.wo.weight"] = (h, heads * d)
        if c["bias"]:
            shapes[p + "attention.wo.bias"] = (h,)
        shapes[p + "feed_forward.w1.weight"] = (inter, h)
        shapes[p + "feed_forward.w3.weight"] = (inter, h)
        shapes[p + "feed_forward.w2.weight"] = (h, inter)
        shapes[p + "attention_norm.weight"] = (h,)
        shapes[p + "ffn_norm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["output.weight"] = (v, h)
    return shapes


def internlm2_config(
    *,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    rope_scaling: dict[str, Any] | None = None,
    bias: bool = False,
    rms_norm_eps: float = 1e-5,
) -> dict[str, Any]:
    """config.json of an InternLM2 checkpoint as published (remote-code auto_map), less vocab and token ids."""
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "model_type": "internlm2",
        "attn_implementation": "eager",
        "bias": bias,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": rms_norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": rope_theta,
        "tie_word_embeddings": False,
        "transformers_version": "4.41.0",
        "use_cache": True,
    }


def build_internlm2_dir(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vocab_size: int | None = None,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    rope_scaling: dict[str, Any] | None = None,
    bias: bool = False,
    rms_norm_eps: float = 1e-5,
    num_shards: int = 2,
    tokenizer: TokenizerKind = "bpe",
    chat_template: str | None = INTERNLM2_CHAT_TEMPLATE,
    seed: int = 0,
    eos_token_id: list[int] | None = None,
    torch_dtype: str = "float32",
    weights_format: WeightsFormat = "safetensors",
) -> Path:
    """An InternLM2 directory as published (remote-code auto_map, grouped wqkv); eos = [</s>, <|im_end|>]."""
    config = internlm2_config(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        bias=bias,
        rms_norm_eps=rms_norm_eps,
    )
    return _build_dir(
        out_dir,
        config=config,
        shapes_fn=_internlm2_shapes,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        chat_template=chat_template,
        eos_token_id=eos_token_id,
        seed=seed,
        num_shards=num_shards,
        torch_dtype=torch_dtype,
        weights_format=weights_format,
    )


def _llama_shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    d = c.get("head_dim") or h // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, out, inp, has_bias in (
            ("self_attn.q_proj", heads * d, h, c["attention_bias"]),
            ("self_attn.k_proj", kv * d, h, c["attention_bias"]),
            ("self_attn.v_proj", kv * d, h, c["attention_bias"]),
            ("self_attn.o_proj", h, heads * d, c["attention_bias"]),
            ("mlp.gate_proj", inter, h, c["mlp_bias"]),
            ("mlp.up_proj", inter, h, c["mlp_bias"]),
            ("mlp.down_proj", h, inter, c["mlp_bias"]),
        ):
            shapes[f"{p}{proj}.weight"] = (out, inp)
            if has_bias:
                shapes[f"{p}{proj}.bias"] = (out,)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def build_llama_dir(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int | None = None,
    vocab_size: int | None = None,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    rope_scaling: dict[str, Any] | None = None,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    tie_word_embeddings: bool = False,
    rms_norm_eps: float = 1e-5,
    num_shards: int = 2,
    tokenizer: TokenizerKind = "bpe",
    chat_template: str | None = INTERNLM2_CHAT_TEMPLATE,
    seed: int = 0,
    eos_token_id: list[int] | None = None,
    torch_dtype: str = "float32",
    weights_format: WeightsFormat = "safetensors",
) -> Path:
    """A Llama directory in the classic config format (rope_theta + rope_scaling)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": attention_bias,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "mlp_bias": mlp_bias,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "rms_norm_eps": rms_norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": rope_theta,
        "tie_word_embeddings": tie_word_embeddings,
        "use_cache": True,
    }
    if head_dim is not None:
        config["head_dim"] = head_dim
    return _build_dir(
        out_dir,
        config=config,
        shapes_fn=_llama_shapes,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        chat_template=chat_template,
        eos_token_id=eos_token_id,
        seed=seed,
        num_shards=num_shards,
        torch_dtype=torch_dtype,
        weights_format=weights_format,
    )


def _internlm2_to_llama(name: str, tensor: torch.Tensor, c: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One InternLM2 checkpoint tensor as the HF Llama tensors it becomes."""
    renames = {
        "model.tok_embeddings.": "model.embed_tokens.",
        ".attention.wo.": ".self_attn.o_proj.",
        ".feed_forward.w1.": ".mlp.gate_proj.",
        ".feed_forward.w3.": ".mlp.up_proj.",
        ".feed_forward.w2.": ".mlp.down_proj.",
        ".attention_norm.": ".input_layernorm.",
        ".ffn_norm.": ".post_attention_layernorm.",
    }
    if name.startswith("output."):
        return {"lm_head." + name.removeprefix("output."): tensor}
    if ".attention.wqkv." in name:
        heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
        q_per_kv = heads // kv
        grouped = tensor.unflatten(0, (kv, q_per_kv + 2, -1))  # [kv, q_per_kv + 2, head_dim, (hidden)]
        prefix, suffix = name.split(".attention.wqkv.")
        return {
            f"{prefix}.self_attn.q_proj.{suffix}": grouped[:, :q_per_kv].flatten(0, 2),
            f"{prefix}.self_attn.k_proj.{suffix}": grouped[:, q_per_kv].flatten(0, 1),
            f"{prefix}.self_attn.v_proj.{suffix}": grouped[:, q_per_kv + 1].flatten(0, 1),
        }
    for old, new in renames.items():
        name = name.replace(old, new)
    return {name: tensor}


def llama_to_internlm2(state: dict[str, torch.Tensor], c: dict[str, Any]) -> dict[str, torch.Tensor]:
    """HF Llama tensors as an InternLM2 checkpoint: the inverse of `_internlm2_to_llama` (q/k/v packed grouped)."""
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    q_per_kv = heads // kv
    renames = {
        "model.embed_tokens.": "model.tok_embeddings.",
        ".self_attn.o_proj.": ".attention.wo.",
        ".mlp.gate_proj.": ".feed_forward.w1.",
        ".mlp.up_proj.": ".feed_forward.w3.",
        ".mlp.down_proj.": ".feed_forward.w2.",
        ".input_layernorm.": ".attention_norm.",
        ".post_attention_layernorm.": ".ffn_norm.",
    }
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if "rotary_emb" in name or ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        if name.startswith("lm_head."):
            out["output." + name.removeprefix("lm_head.")] = tensor
        elif ".self_attn.q_proj." in name:
            prefix, suffix = name.split(".self_attn.q_proj.")
            q = tensor.unflatten(0, (kv, q_per_kv, -1))  # [kv, q_per_kv, head_dim, (hidden)]
            k = state[f"{prefix}.self_attn.k_proj.{suffix}"].unflatten(0, (kv, 1, -1))
            v = state[f"{prefix}.self_attn.v_proj.{suffix}"].unflatten(0, (kv, 1, -1))
            out[f"{prefix}.attention.wqkv.{suffix}"] = torch.cat((q, k, v), dim=1).flatten(0, 2)
        else:
            for old, new in renames.items():
                name = name.replace(old, new)
            out[name] = tensor
    return out


def hf_reference_model(model_dir: Path) -> Any:
    """transformers.LlamaForCausalLM with the directory's weights (fp32, eval, eager attention); for
    InternLM3 / Qwen3 / Qwen3-MoE directories, tiny_archs.hf_reference."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from interndeploy.models.loader import iter_checkpoint

    model_dir = Path(model_dir)
    c = json.loads((model_dir / "config.json").read_text())
    if set(c.get("architectures", [])) & {"InternLM3ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"}:
        from interndeploy.testing.tiny_archs import hf_reference

        return hf_reference(model_dir)
    is_internlm2 = "InternLM2ForCausalLM" in c.get("architectures", [])
    fields = dict(c)
    for key in ("architectures", "auto_map", "model_type", "bias", "torch_dtype", "attn_implementation"):
        fields.pop(key, None)
    if is_internlm2:
        fields.update(attention_bias=c.get("bias", False), mlp_bias=False)
    config = LlamaConfig(**fields)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in iter_checkpoint(model_dir):
        if "rotary_emb.inv_freq" in name:
            continue
        state.update(_internlm2_to_llama(name, tensor, c) if is_internlm2 else {name: tensor})
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if config.tie_word_embeddings:
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"reference model load of {model_dir}: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.float().eval()
