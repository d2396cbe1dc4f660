"""Qwen3 (Intern-S1-mini's language model) through our engine path vs transformers' Qwen3ForCausalLM."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from interndeploy.models.qwen3 import Qwen3ForCausalLM
from interndeploy.testing.compare import assert_matches_hf, load_our_model, random_prompts, run_paged
from interndeploy.testing.tiny_archs import build_qwen3_dir


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"num_attention_heads": 4, "num_key_value_heads": 4},
        {"head_dim": 16},
        {"attention_bias": True},
        {"tie_word_embeddings": True, "num_shards": 1},
    ],
    ids=["gqa", "mha", "head_dim=hidden/heads", "bias", "tied"],
)
def test_matches_hf(tmp_path: Path, kw: dict) -> None:
    assert_matches_hf(build_qwen3_dir(tmp_path / "m", **kw), [7, 1, 13, 4])


def test_chunked_prefill_and_block_sizes(tmp_path: Path) -> None:
    d = build_qwen3_dir(tmp_path / "m")
    assert_matches_hf(d, [11, 5, 17], block_size=1, prefill_chunk=4)
    assert_matches_hf(d, [11, 5, 17], block_size=16, prefill_chunk=3)


def test_qk_norm_is_loaded_and_used(tmp_path: Path) -> None:
    model = load_our_model(build_qwen3_dir(tmp_path / "m"))
    attn = model.model.layers[1].self_attn
    assert attn.q_norm.weight.shape == (32,) and not torch.all(attn.q_norm.weight == 1)
    prompts = random_prompts(512, [6])
    before = run_paged(model, prompts, decode_steps=0).prefill_logits[0]
    with torch.no_grad():
        attn.k_norm.weight.mul_(3.0)
    after = run_paged(model, prompts, decode_steps=0).prefill_logits[0]
    assert (before - after).abs().max() > 1e-3


def test_one_at_a_time_equals_batched(tmp_path: Path) -> None:
    model = load_our_model(build_qwen3_dir(tmp_path / "m"))
    prompts = random_prompts(512, [9, 3, 14])
    batched = run_paged(model, prompts, decode_steps=5, prefill_chunk=4)
    for b, prompt in enumerate(prompts):
        alone = run_paged(model, [prompt], decode_steps=5)
        assert alone.tokens[0] == batched.tokens[b]
        torch.testing.assert_close(alone.prefill_logits[0], batched.prefill_logits[b], atol=1e-5, rtol=0)


def test_sliding_window_is_refused(tmp_path: Path) -> None:
    d = build_qwen3_dir(tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=8)
    with pytest.raises(ValueError, match="use_sliding_window"):
        Qwen3ForCausalLM(SimpleNamespace(**config))
