"""pipeline() end to end on the issue-7 architectures: greedy output equals transformers', batched and one
at a time. Intern-S1 and Intern-S1-mini are multimodal checkpoints served as their language model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interndeploy import EngineConfig, GenerationConfig, pipeline

PROMPTS = ["Hello there, how are you today?", "Tell me a story", "a"]
GREEDY = GenerationConfig(max_new_tokens=6, ignore_eos=True)


def _hf_greedy(model, ids: list[int], steps: int) -> list[int]:
    tokens = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(ids) :]


def _internlm3(root: Path) -> tuple[Path, Path]:
    from interndeploy.testing.tiny_archs import build_internlm3_dir

    d = build_internlm3_dir(root / "internlm3", qkv_bias=True)
    return d, d


def _intern_s1_mini(root: Path) -> tuple[Path, Path]:
    from interndeploy.testing.tiny_archs import build_qwen3_dir, wrap_as_multimodal

    lm = build_qwen3_dir(root / "qwen3")
    return wrap_as_multimodal(lm, root / "s1-mini", "interns1"), lm


def _intern_s1_fp8(root: Path) -> tuple[Path, Path]:
    from interndeploy.testing.tiny_archs import build_qwen3_moe_dir, quantize_dir_fp8, wrap_as_multimodal

    lm = quantize_dir_fp8(build_qwen3_moe_dir(root / "moe"), root / "moe-fp8", (16, 16))
    return wrap_as_multimodal(lm, root / "s1-fp8", "interns1"), lm


@pytest.mark.parametrize("make", [_internlm3, _intern_s1_mini, _intern_s1_fp8], ids=["internlm3", "s1-mini", "s1-fp8"])
def test_greedy_equals_transformers(tmp_path: Path, make) -> None:
    from interndeploy.testing.tiny_models import hf_reference_model

    model_dir, lm_dir = make(tmp_path)
    hf = hf_reference_model(lm_dir)  # FP8 weights dequantized: what our CPU path computes
    pipe = pipeline(str(model_dir), backend_config=EngineConfig(block_size=16, cpu_kv_budget_gib=0.25))
    try:
        refs = [_hf_greedy(hf, pipe.tokenizer.encode(p), GREEDY.max_new_tokens) for p in PROMPTS]
        outs = pipe(PROMPTS, gen_config=GREEDY, do_preprocess=False)
        assert [o.token_ids for o in outs] == refs
        assert pipe(PROMPTS[0], gen_config=GREEDY, do_preprocess=False).token_ids == refs[0]
    finally:
        pipe.close()
