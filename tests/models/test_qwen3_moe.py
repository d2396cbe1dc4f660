"""Qwen3-MoE (Intern-S1's language model) through our engine path vs transformers' Qwen3MoeForCausalLM,
and the pieces of the MoE layer: routing, per-expert loading, tensor-parallel slicing of the experts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import interndeploy.layers.moe as moe
from interndeploy.layers.moe import FusedMoE, SparseMoE, expert_checkpoint_name, select_experts
from interndeploy.models.loader import WeightLoadError
from interndeploy.testing.compare import assert_matches_hf, hf_logits, load_our_model, random_prompts, run_paged
from interndeploy.testing.tiny_archs import build_qwen3_moe_dir


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"norm_topk_prob": False},
        {"num_experts_per_tok": 1, "num_experts": 4},
        {"num_experts_per_tok": 4, "num_experts": 4},  # every expert, every token
        {"num_hidden_layers": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3]},  # dense, sparse, dense, dense
    ],
    ids=["renormalised", "not-renormalised", "top1", "all-experts", "mixed-dense-sparse"],
)
def test_matches_hf(tmp_path: Path, kw: dict) -> None:
    assert_matches_hf(build_qwen3_moe_dir(tmp_path / "m", **kw), [7, 1, 13, 4])


def test_layer_kinds_follow_the_config(tmp_path: Path) -> None:
    d = build_qwen3_moe_dir(tmp_path / "m", num_hidden_layers=4, decoder_sparse_step=2, mlp_only_layers=[3])
    model = load_our_model(d)
    assert [isinstance(layer.mlp, SparseMoE) for layer in model.model.layers] == [False, True, False, False]
    experts = model.model.layers[1].mlp.experts
    assert experts.w13_weight.shape == (8, 64, 64) and experts.w2_weight.shape == (8, 64, 32)


def test_checkpoint_names_are_what_transformers_reads(tmp_path: Path) -> None:
    """transformers' own from_pretrained (its per-expert -> stacked conversion) gives the same logits."""
    from transformers import Qwen3MoeForCausalLM

    from interndeploy.testing.tiny_models import hf_reference_model

    d = build_qwen3_moe_dir(tmp_path / "m")
    loaded = Qwen3MoeForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    prompt = random_prompts(512, [9])[0]
    torch.testing.assert_close(hf_logits(loaded, prompt), hf_logits(hf_reference_model(d), prompt), atol=1e-5, rtol=0)


def test_one_at_a_time_equals_batched(tmp_path: Path) -> None:
    model = load_our_model(build_qwen3_moe_dir(tmp_path / "m"))
    prompts = random_prompts(512, [9, 3, 14])
    batched = run_paged(model, prompts, decode_steps=5, prefill_chunk=4)
    for b, prompt in enumerate(prompts):
        alone = run_paged(model, [prompt], decode_steps=5)
        assert alone.tokens[0] == batched.tokens[b]
        torch.testing.assert_close(alone.prefill_logits[0], batched.prefill_logits[b], atol=1e-5, rtol=0)


def test_missing_expert_is_named(tmp_path: Path) -> None:
    d = build_qwen3_moe_dir(tmp_path / "m", num_shards=1)
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, d / "model.safetensors")
    missing = r"model\.layers\.1\.mlp\.experts\.w13_weight \(shards \[\"\(3, 'up'\)\"\]"
    with pytest.raises(WeightLoadError, match=missing):
        load_our_model(d)


def test_expert_checkpoint_names() -> None:
    assert expert_checkpoint_name("model.layers.2.mlp.experts.17.up_proj.weight") == (
        "model.layers.2.mlp.experts.w13_weight", (17, "up"))  # fmt: skip
    assert expert_checkpoint_name("model.layers.2.mlp.experts.0.down_proj.weight_scale_inv") == (
        "model.layers.2.mlp.experts.w2_weight_scale_inv", (0, "down"))  # fmt: skip
    assert expert_checkpoint_name("model.layers.2.mlp.gate.weight") is None
    assert expert_checkpoint_name("model.layers.2.mlp.gate_proj.weight") is None


@pytest.mark.parametrize("renormalize", [True, False])
def test_select_experts(renormalize: bool) -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 3.5]])
    weights, ids = select_experts(logits, 2, renormalize)
    assert ids.tolist() == [[1, 2], [3, 0]]
    probs = torch.softmax(logits, -1)
    expected = probs.gather(1, ids)
    if renormalize:
        expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected)
    assert weights.dtype == torch.float32


def test_experts_split_their_intermediate_dim_across_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank r of tp holds rows [r I/tp, (r+1) I/tp) of every expert's gate and up, the same columns of down."""
    gate, up, down = torch.randn(6, 8), torch.randn(6, 8), torch.randn(8, 6)
    for rank in (0, 1):
        monkeypatch.setattr(moe, "tp_rank_and_size", lambda r=rank: (r, 2))
        layer = FusedMoE(num_experts=3, hidden_size=8, intermediate_size=6)
        assert layer.intermediate_size == 3 and layer.w13_weight.shape == (3, 6, 8)
        for part, tensor in (("gate", gate), ("up", up)):
            layer.w13_weight.weight_loader(layer.w13_weight, tensor, (2, part))
        layer.w2_weight.weight_loader(layer.w2_weight, down, (2, "down"))
        rows = slice(3 * rank, 3 * rank + 3)
        torch.testing.assert_close(layer.w13_weight[2], torch.cat([gate[rows], up[rows]]), atol=0, rtol=0)
        torch.testing.assert_close(layer.w2_weight[2], down[:, rows], atol=0, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        layer.w2_weight.weight_loader(layer.w2_weight, down, (3, "down"))
