"""Real model shapes by name, for benchmarks with random weights and no checkpoint files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

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
    # for smoke tests on CPU
    "internlm2-tiny": dict(
        architectures=["InternLM2ForCausalLM"], model_type="internlm2", hidden_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, vocab_size=1024,
        max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-5, bias=False,
    ),
    # InternLM3 is Llama-shaped (its own architecture class lands with the next architectures)
    "internlm3-8b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=2, head_dim=128, intermediate_size=10240, vocab_size=128512,
        max_position_embeddings=32768, rope_theta=5e7, rms_norm_eps=1e-5, tie_word_embeddings=False,
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


def weight_bytes_read_per_token(config: dict, dtype_bytes: int) -> int:
    """Bytes of weights a batch-1 decode step reads: everything but the input embedding table."""
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or h // heads
    per_layer = h * (heads + 2 * kv) * d + heads * d * h + 3 * h * i + 2 * h
    return (n * per_layer + h + config["vocab_size"] * h) * dtype_bytes
