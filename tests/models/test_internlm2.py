"""InternLM2 through our engine path (loader, paged cache, batched prefill + decode) vs transformers' Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interndeploy.models.internlm2 import InternLM2ForCausalLM
from interndeploy.testing.compare import (
    assert_matches_hf,
    hf_cached_decode,
    hf_logits,
    load_our_model,
    random_prompts,
    run_paged,
)
from interndeploy.testing.tiny_models import build_internlm2_dir, hf_reference_model

ATOL = 1e-4


@pytest.mark.parametrize(
    ("heads", "kv_heads", "bias"),
    [(4, 2, False), (4, 4, False), (4, 4, True), (8, 1, True)],
    ids=["gqa", "mha", "mha-bias", "mqa-bias"],
)
def test_matches_hf(tmp_path: Path, heads: int, kv_heads: int, bias: bool) -> None:
    d = build_internlm2_dir(tmp_path / "m", num_attention_heads=heads, num_key_value_heads=kv_heads, bias=bias)
    assert_matches_hf(d, [7, 1, 13, 4])


def test_greedy_output_is_not_degenerate(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m")
    run = run_paged(load_our_model(d), random_prompts(512, [6, 9]), decode_steps=8)
    assert all(len(set(tokens)) > 2 for tokens in run.tokens), run.tokens


def test_chunked_prefill_and_block_sizes(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m")
    assert_matches_hf(d, [11, 5, 17], block_size=1, prefill_chunk=4)
    assert_matches_hf(d, [11, 5, 17], block_size=16, prefill_chunk=3)


def test_profile_run_without_cache_equals_cached_prefill(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m")
    model, prompts = load_our_model(d), random_prompts(512, [5, 12, 2])
    cached = run_paged(model, prompts, decode_steps=0)
    plain = run_paged(model, prompts, decode_steps=0, use_cache=False)
    for a, b in zip(cached.prefill_logits, plain.prefill_logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_bin_checkpoint_and_sentencepiece_tokenizer(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m", weights_format="bin", num_shards=3, tokenizer="sentencepiece")
    assert not list(d.glob("*.safetensors")) and (d / "pytorch_model.bin.index.json").is_file()
    assert (d / "tokenizer.model").is_file()
    assert_matches_hf(d, [6, 3])


def test_linear_rope_scaling(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m", rope_scaling={"type": "linear", "factor": 2.0})
    assert_matches_hf(d, [9, 14])


def test_dynamic_rope_within_max_position_is_unscaled(tmp_path: Path) -> None:
    plain = build_internlm2_dir(tmp_path / "plain")
    dyn = build_internlm2_dir(tmp_path / "dyn", rope_scaling={"type": "dynamic", "factor": 2.0})
    prompts = random_prompts(512, [9, 14])
    a, b = run_paged(load_our_model(plain), prompts), run_paged(load_our_model(dyn), prompts)
    for x, y in zip(a.prefill_logits, b.prefill_logits, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert_matches_hf(dyn, [9, 14])


def test_dynamic_rope_beyond_max_position(tmp_path: Path) -> None:
    """Past max_position_embeddings, dynamic NTK rescales the base by the sequence length L at the time a
    token is computed; keys already cached keep their old angles. HF's LlamaRotaryEmbedding does the same
    per forward (seq_len = max position + 1), so we match HF's prefill per sequence and HF's *cached* decode.
    HF's full recompute at L + 1 re-rotates every key with base(L + 1), so it is not the reference here."""
    max_pos = 16
    d = build_internlm2_dir(
        tmp_path / "m", max_position_embeddings=max_pos, rope_scaling={"type": "dynamic", "factor": 2.0}
    )
    ours, hf = load_our_model(d), hf_reference_model(d)
    # one prompt past max_pos, one crossing it while decoding, one staying below
    prompts = random_prompts(hf.config.vocab_size, [23, 14, 5])
    run = run_paged(ours, prompts, decode_steps=4)
    for b, prompt in enumerate(prompts):
        torch.testing.assert_close(run.prefill_logits[b], hf_logits(hf, prompt), atol=ATOL, rtol=0)
        for ours_step, ref in zip(run.decode_logits[b], hf_cached_decode(hf, prompt, run.tokens[b]), strict=True):
            torch.testing.assert_close(ours_step, ref, atol=ATOL, rtol=0)
    # the scaling is really in effect: a full recompute of the long sequence differs from the cached decode
    full = hf_logits(hf, prompts[0] + run.tokens[0])[len(prompts[0])]
    assert (full - run.decode_logits[0][0]).abs().max() > 1e-3


def test_logits_for_selected_rows_only(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m")
    model = load_our_model(d)
    hidden = torch.randn(5, 64)
    torch.testing.assert_close(model.compute_logits(hidden[[1, 4]]), model.compute_logits(hidden)[[1, 4]])
    assert model.compute_logits(hidden).dtype == torch.float32


def test_grouped_wqkv_is_reordered(tmp_path: Path) -> None:
    """Our qkv_proj rows are [q heads | k heads | v heads] taken out of InternLM2's per-group layout."""
    d = build_internlm2_dir(tmp_path / "m", num_attention_heads=4, num_key_value_heads=2)
    model, hf = load_our_model(d), hf_reference_model(d)
    attn = hf.model.layers[0].self_attn
    expected = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    torch.testing.assert_close(model.model.layers[0].self_attn.qkv_proj.weight, expected, atol=0, rtol=0)


def test_bfloat16_checkpoint_runs_in_bfloat16(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m", torch_dtype="bfloat16")
    ours, hf = load_our_model(d, torch.bfloat16), hf_reference_model(d)
    assert ours.lm_head.weight.dtype == torch.bfloat16
    prompts = random_prompts(hf.config.vocab_size, [8, 3])
    run = run_paged(ours, prompts, decode_steps=2)
    for b, prompt in enumerate(prompts):
        ref = hf_logits(hf, prompt)
        assert run.prefill_logits[b].dtype == torch.float32
        # bf16 activations: loose, relative to the logit scale
        assert (run.prefill_logits[b] - ref).abs().max() < 0.05 * ref.abs().max()


def test_config_as_plain_attributes_uses_defaults() -> None:
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        architectures=["InternLM2ForCausalLM"], hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    model = InternLM2ForCausalLM(cfg)
    assert model.spec.num_kv_heads == 4 and not model.spec.attention_bias
    assert model.model.layers[0].self_attn.qkv_proj.weight.shape == (3 * 32, 32)
