"""Real model shapes by name, for benchmarks with random weights and no checkpoint files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict] = {
    "internlm2_5-1_8b": dict(
        architectures=["InternLM2ForCausalLM"], model_type="internlm2", hidden_size=2048, num_hidden_layers=24,
        num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192, vocab_size=92544,
        max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-5, bias=False,
        rope_scaling={"type": "dynamic", "factor": 2.0},
    ),
    "internlm2_5-7b": dict(
        architectures=["InternLM2ForCausalLM"], model_type="internlm2", hidden_size=4096, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=92544,
        max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-5, bias=False,
        rope_scaling={"type": "dynamic", "factor": 2.0},
    ),
    # InternLM2.5-7B with as many kv heads as heads (MHA): 4x the KV bytes per token, a memory-bound decode load
    # for the KV int8 / int4 (--quant-policy 8 / 4) targets
    "internlm2_5-7b-mha": dict(
        architectures=["InternLM2ForCausalLM"], model_type="internlm2", hidden_size=4096, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, intermediate_size=14336, vocab_size=92544,
        max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-5, bias=False,
        rope_scaling={"type": "dynamic", "factor": 2.0},
    ),
    # for smoke tests on CPU
    "internlm2-tiny": dict(
        architectures=["InternLM2ForCausalLM"], model_type="internlm2", hidden_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, vocab_size=1024,
        max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-5, bias=False,
    ),
    "internlm3-8b": dict(
        architectures=["InternLM3ForCausalLM"], model_type="internlm3", hidden_size=4096, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=2, head_dim=128, intermediate_size=10240, vocab_size=128512,
        max_position_embeddings=32768, rope_theta=5e7, rms_norm_eps=1e-5, tie_word_embeddings=False,
        qkv_bias=False, bias=False, rope_scaling={"rope_type": "dynamic", "factor": 6.0},
    ),
    # Intern-S1-mini's language model (Qwen3-8B shape)
    "intern-s1-mini": dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=4096, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=12288, vocab_size=153216,
        max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    # a Qwen3-MoE that fits one GPU (Qwen3-30B-A3B shape); Intern-S1's is 94 layers of 128 experts at hidden 4096
    "qwen3-30b-a3b": dict(
        architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_size=2048, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, intermediate_size=6144, vocab_size=151936,
        moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
}


def is_shape_name(name: str) -> bool:
    return name in SHAPES


def shape_model_dir(name: str, root: Path | None = None) -> Path:
    """A directory with the shape's config.json and a small tokenizer (no weights: load_format=dummy)."""
    from ..testing.tokenizers import train_bpe_tokenizer

    out = Path(root or tempfile.mkdtemp(prefix=f"interndeploy-{name}-"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(SHAPES[name], torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    train_bpe_tokenizer(out)
    return out


def param_bytes_read_per_token(model: Any) -> int:
    """Bytes of parameters a batch-1 decode step reads, as the loaded model holds them (int4 weights count at
    their packed size): every parameter but the input embedding table (a tied LM head still counts)."""
    return sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters(remove_duplicate=False)
        if "embed_tokens" not in name
    )


def weight_bytes_read_per_token(config: dict, dtype_bytes: int) -> int:
    """Bytes of weights a batch-1 decode step reads: everything but the input embedding table."""
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or h // heads
    per_layer = h * (heads + 2 * kv) * d + heads * d * h + 3 * h * i + 2 * h
    return (n * per_layer + h + config["vocab_size"] * h) * dtype_bytes
