"""Llama through our engine path vs transformers' LlamaForCausalLM, and our rotary embedding vs HF's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interndeploy.layers.rotary import get_rope
from interndeploy.models.llama import LlamaForCausalLM
from interndeploy.testing.attention import make_prefill_metadata
from interndeploy.testing.compare import (
    assert_matches_hf,
    hf_cached_decode,
    hf_logits,
    load_our_model,
    random_prompts,
    run_paged,
)
from interndeploy.testing.tiny_models import build_llama_dir, hf_reference_model
from interndeploy.worker.forward_context import forward_context

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"num_attention_heads": 4, "num_key_value_heads": 4},
        {"head_dim": 32},
        {"attention_bias": True, "mlp_bias": True},
        {"tie_word_embeddings": True, "num_shards": 1},
    ],
    ids=["gqa", "mha", "head_dim", "bias", "tied"],
)
def test_matches_hf(tmp_path: Path, kw: dict) -> None:
    assert_matches_hf(build_llama_dir(tmp_path / "m", **kw), [7, 1, 13, 4])


@pytest.mark.parametrize(
    "rope_scaling",
    [{"type": "linear", "factor": 2.0}, {"rope_type": "linear", "factor": 3.0}, LLAMA3],
    ids=["linear-type", "linear-rope_type", "llama3"],
)
def test_rope_scaling_matches_hf(tmp_path: Path, rope_scaling: dict) -> None:
    d = build_llama_dir(tmp_path / "m", rope_scaling=rope_scaling, max_position_embeddings=512, rope_theta=500.0)
    assert_matches_hf(d, [9, 14], prefill_chunk=5)


def test_tied_lm_head_shares_the_embedding(tmp_path: Path) -> None:
    model = load_our_model(build_llama_dir(tmp_path / "m", tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_dynamic_rope_beyond_max_position(tmp_path: Path) -> None:
    """Prefill equals HF per sequence; decode equals HF's cached decode (see the InternLM2 test for why)."""
    d = build_llama_dir(tmp_path / "m", max_position_embeddings=12, rope_scaling={"type": "dynamic", "factor": 4.0})
    ours, hf = load_our_model(d), hf_reference_model(d)
    prompts = random_prompts(hf.config.vocab_size, [19, 10, 3])
    run = run_paged(ours, prompts, decode_steps=4)
    for b, prompt in enumerate(prompts):
        torch.testing.assert_close(run.prefill_logits[b], hf_logits(hf, prompt), atol=1e-4, rtol=0)
        for got, ref in zip(run.decode_logits[b], hf_cached_decode(hf, prompt, run.tokens[b]), strict=True):
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_model_from_transformers_config_object() -> None:
    """A transformers LlamaConfig (rope in `rope_parameters`) works as well as raw config.json attributes."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, rope_theta=1234.0, rope_scaling={"type": "linear", "factor": 2.0},
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    rope = model.model.rotary_emb
    assert (rope.rope_type, rope.base, rope.factor) == ("linear", 1234.0, 2.0)


# --- rotary embedding against HF's LlamaRotaryEmbedding ---------------------------------------------


def _hf_rope(config):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    return LlamaRotaryEmbedding(config)


@pytest.mark.parametrize(
    "rope_scaling",
    [None, {"type": "linear", "factor": 4.0}, LLAMA3, {"type": "dynamic", "factor": 2.0}],
    ids=["default", "linear", "llama3", "dynamic"],
)
@pytest.mark.parametrize("seq_len", [40, 64, 100, 300])
def test_rotary_cos_sin_match_hf(rope_scaling: dict | None, seq_len: int) -> None:
    """One sequence of seq_len tokens (max_position_embeddings = 64): HF's cos/sin for all its positions."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=64, num_attention_heads=2, max_position_embeddings=64, rope_theta=10000.0,
        rope_scaling=rope_scaling,
    )  # fmt: skip
    ours = get_rope(cfg, head_dim=32)
    ours.reserve_positions(seq_len)
    positions = torch.arange(seq_len)
    with forward_context(make_prefill_metadata([seq_len], block_size=16)):
        cos, sin = ours.cos_sin(positions)
    ref_cos, ref_sin = _hf_rope(cfg)(torch.zeros(1), positions[None])
    torch.testing.assert_close(torch.cat([cos, cos], -1), ref_cos[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([sin, sin], -1), ref_sin[0], atol=1e-5, rtol=0)


def test_dynamic_rope_uses_each_tokens_own_sequence_length() -> None:
    """In one batch, tokens of a long sequence are scaled by its length, tokens of a short one are not."""
    from interndeploy.layers.rotary import RotaryEmbedding

    rope = RotaryEmbedding(16, 32, 10000.0, {"type": "dynamic", "factor": 2.0})
    plain = RotaryEmbedding(16, 32, 10000.0, None)
    meta = make_prefill_metadata([50, 10], block_size=16)
    positions = torch.cat([torch.arange(50), torch.arange(10)])
    with forward_context(meta):
        cos, _ = rope.cos_sin(positions)
        plain_cos, _ = plain.cos_sin(torch.arange(10))
    torch.testing.assert_close(cos[50:], plain_cos, atol=0, rtol=0)
    base = 10000.0 * ((2.0 * 50 / 32) - 1.0) ** (16 / 14)
    inv_freq = 1.0 / base ** (torch.arange(0, 16, 2).float() / 16)
    torch.testing.assert_close(cos[:50], torch.outer(torch.arange(50).float(), inv_freq).cos(), atol=1e-5, rtol=0)
