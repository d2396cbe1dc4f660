"""Qwen2 (InternVL2.5 / InternVL3's language model): our logits equal transformers' Qwen2ForCausalLM."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def test_qwen2_matches_transformers(tmp_path: Path):
    import transformers
    from safetensors.torch import load_file

    from interndeploy.testing.compare import hf_logits, load_our_model, random_prompts, run_paged
    from interndeploy.testing.tiny_archs import _build, _decoder_shapes, _qwen3_config

    config = _qwen3_config(64, 128, 2, 4, 2, 16, True, False, 2048, 1e6, 1e-6)
    config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    config.pop("head_dim")
    d = _build(tmp_path / "q2", config,
               lambda c: _decoder_shapes(c, qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False))
    c = json.loads((d / "config.json").read_text())
    fields = {k: v for k, v in c.items() if k not in ("architectures", "model_type", "torch_dtype", "attention_bias")}
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**fields))
    hf.config._attn_implementation = "eager"
    state = {}
    for f in d.glob("*.safetensors"):
        state.update(load_file(f))
    assert not hf.load_state_dict(state, strict=True).missing_keys
    hf = hf.float().eval()
    prompts = random_prompts(c["vocab_size"], [9, 5])
    run = run_paged(load_our_model(d), prompts, decode_steps=2)
    for b, prompt in enumerate(prompts):
        torch.testing.assert_close(run.prefill_logits[b], hf_logits(hf, prompt), atol=1e-4, rtol=0)
        ref = hf_logits(hf, prompt + run.tokens[b])
        assert run.tokens[b] == ref[len(prompt) - 1 : -1].argmax(-1).tolist()
