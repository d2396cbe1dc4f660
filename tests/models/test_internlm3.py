"""InternLM3 through our engine path vs transformers' Llama (InternLM3 is Llama-shaped; its qkv_bias / bias
split is mapped onto Llama's biases, zero where InternLM3 has none)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interndeploy.models.internlm3 import InternLM3ForCausalLM
from interndeploy.models.registry import get_model_class
from interndeploy.testing.compare import (
    assert_matches_hf,
    hf_cached_decode,
    hf_logits,
    load_our_model,
    random_prompts,
    run_paged,
)
from interndeploy.testing.tiny_archs import build_internlm3_dir
from interndeploy.testing.tiny_models import hf_reference_model


@pytest.mark.parametrize(
    "kw",
    [{}, {"qkv_bias": True}, {"bias": True}, {"qkv_bias": True, "bias": True}, {"num_key_value_heads": 1}],
    ids=["plain", "qkv_bias", "o_mlp_bias", "all_bias", "mqa"],
)
def test_matches_hf(tmp_path: Path, kw: dict) -> None:
    assert_matches_hf(build_internlm3_dir(tmp_path / "m", **kw), [7, 1, 13, 4])


def test_bias_flags_reach_the_right_layers(tmp_path: Path) -> None:
    model = load_our_model(build_internlm3_dir(tmp_path / "m", qkv_bias=True, bias=False))
    layer = model.model.layers[0]
    assert layer.self_attn.qkv_proj.bias is not None
    assert layer.self_attn.o_proj.bias is None and layer.mlp.gate_up_proj.bias is None
    assert get_model_class(["InternLM3ForCausalLM"]) is InternLM3ForCausalLM


def test_dynamic_rope_beyond_max_position(tmp_path: Path) -> None:
    """The released rope_scaling (dynamic, factor 6): HF per-sequence prefill and HF cached decode, as for Llama."""
    d = build_internlm3_dir(tmp_path / "m", max_position_embeddings=12)
    ours, hf = load_our_model(d), hf_reference_model(d)
    prompts = random_prompts(hf.config.vocab_size, [19, 10, 3])
    run = run_paged(ours, prompts, decode_steps=4)
    for b, prompt in enumerate(prompts):
        torch.testing.assert_close(run.prefill_logits[b], hf_logits(hf, prompt), atol=1e-4, rtol=0)
        for got, ref in zip(run.decode_logits[b], hf_cached_decode(hf, prompt, run.tokens[b]), strict=True):
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_one_at_a_time_equals_batched(tmp_path: Path) -> None:
    model = load_our_model(build_internlm3_dir(tmp_path / "m"))
    prompts = random_prompts(512, [9, 3, 14])
    batched = run_paged(model, prompts, decode_steps=5, prefill_chunk=4)
    for b, prompt in enumerate(prompts):
        alone = run_paged(model, [prompt], decode_steps=5)
        assert alone.tokens[0] == batched.tokens[b]
        torch.testing.assert_close(alone.prefill_logits[0], batched.prefill_logits[b], atol=1e-5, rtol=0)
