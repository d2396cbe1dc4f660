"""The generic weight loader: file discovery, name mapping, casting, and clear errors; plus the registry."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from interndeploy.models.internlm2 import InternLM2ForCausalLM
from interndeploy.models.llama import LlamaForCausalLM
from interndeploy.models.loader import WeightLoadError, checkpoint_files, iter_checkpoint, load_weights
from interndeploy.models.registry import UnsupportedArchitectureError, get_model_class
from interndeploy.testing.tiny_models import build_internlm2_dir, build_llama_dir


def _model(model_dir: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    config = SimpleNamespace(**json.loads((model_dir / "config.json").read_text()))
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return get_model_class(config.architectures)(config)
    finally:
        torch.set_default_dtype(prev)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _drop_tensor(model_dir: Path, name: str) -> None:
    """Rewrite the shard holding `name` without it (the index keeps naming it, as a broken download would)."""
    for path in model_dir.glob("*.safetensors"):
        tensors = load_file(path)
        if name in tensors:
            del tensors[name]
            save_file(tensors, path)
            return
    raise AssertionError(f"{name} not in {model_dir}")


@pytest.mark.parametrize(
    "kw",
    [
        {"num_shards": 3},
        {"num_shards": 1},
        {"weights_format": "bin", "num_shards": 2},
        {"weights_format": "bin", "num_shards": 1},
    ],
    ids=["safetensors-sharded", "safetensors-single", "bin-sharded", "bin-single"],
)
def test_formats_load_the_same_weights(tmp_path: Path, kw: dict) -> None:
    reference = build_internlm2_dir(tmp_path / "ref", num_shards=2)
    model_ref = _model(reference)
    load_weights(model_ref, reference, torch.float32)
    d = build_internlm2_dir(tmp_path / "m", **kw)
    model = _model(d)
    load_weights(model, d, torch.float32)
    for name, tensor in _state(model_ref).items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


def test_sharded_safetensors_without_index(tmp_path: Path) -> None:
    d = build_llama_dir(tmp_path / "m", num_shards=3)
    (d / "model.safetensors.index.json").unlink()
    assert len(checkpoint_files(d)) == 3
    load_weights(_model(d), d, torch.float32)


def test_index_lists_only_its_files(tmp_path: Path) -> None:
    """A stray *.safetensors next to an index (e.g. consolidated weights) is not read."""
    d = build_llama_dir(tmp_path / "m", num_shards=2)
    save_file({"junk": torch.zeros(1)}, d / "consolidated.safetensors")
    assert all(p.name.startswith("model-") for p in checkpoint_files(d))


def test_casts_to_dtype(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m", torch_dtype="bfloat16")
    model = _model(d, torch.float32)
    load_weights(model, d, torch.float32)
    first = next(iter_checkpoint(d))
    assert first[1].dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model16 = _model(d, torch.bfloat16)
    load_weights(model16, d, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model16.parameters())


def test_inv_freq_is_skipped(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m", weights_format="bin", num_shards=1)
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    state["model.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save(state, d / "pytorch_model.bin")
    load_weights(_model(d), d, torch.float32)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m")
    _drop_tensor(d, "model.layers.1.ffn_norm.weight")
    with pytest.raises(WeightLoadError, match=r"missing 1 weights .*model\.layers\.1\.post_attention_layernorm"):
        load_weights(_model(d), d, torch.float32)


def test_missing_shard_of_packed_weight_is_named(tmp_path: Path) -> None:
    d = build_llama_dir(tmp_path / "m")
    _drop_tensor(d, "model.layers.0.self_attn.k_proj.weight")
    with pytest.raises(WeightLoadError, match=r"model\.layers\.0\.self_attn\.qkv_proj\.weight \(shards \['k'\]\)"):
        load_weights(_model(d), d, torch.float32)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightLoadError, match=r"cannot load model\.layers\.\d+\.feed_forward\.w\d\.weight"):
        load_weights(_model(d), d, torch.float32)


def test_no_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightLoadError, match="has no \\*.safetensors or pytorch_model\\*.bin weights"):
        load_weights(torch.nn.Linear(1, 1), tmp_path, torch.float32)


def test_unexpected_tensors_are_reported_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = build_llama_dir(tmp_path / "m", num_shards=1)
    tensors = load_file(d / "model.safetensors")
    tensors["vision_tower.patch.weight"] = torch.zeros(2)
    save_file(tensors, d / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        load_weights(_model(d), d, torch.float32)
    assert "vision_tower.patch.weight" in caplog.text


def test_every_parameter_has_a_weight_loader() -> None:
    cfg = SimpleNamespace(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, max_position_embeddings=64, bias=True,
    )  # fmt: skip
    for cls in (InternLM2ForCausalLM, LlamaForCausalLM):
        for name, param in cls(cfg).named_parameters():
            assert callable(getattr(param, "weight_loader", None)), name


def test_registry() -> None:
    assert get_model_class(["InternLM2ForCausalLM"]) is InternLM2ForCausalLM
    assert get_model_class(["LlamaForCausalLM"]) is LlamaForCausalLM
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel is not supported.*InternLM2ForCausalLM"):
        get_model_class(["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match=r"\(none listed\)"):
        get_model_class([])
