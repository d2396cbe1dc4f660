"""Finding model directories: local paths and the offline Hugging Face cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from interndeploy.model_dir import ModelDirError, load_model_info


def test_repo_id_found_in_hf_cache(tmp_path: Path, internlm2_dir: Path, monkeypatch: pytest.MonkeyPatch):
    hub = tmp_path / "hf" / "hub" / "models--internlm--internlm2_5-7b-chat"
    snap = hub / "snapshots" / "abc123"
    shutil.copytree(internlm2_dir, snap)
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    info = load_model_info("internlm/internlm2_5-7b-chat")
    assert info.path == snap
    assert info.architecture == "InternLM2ForCausalLM"


def test_repo_id_missing_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ModelDirError, match="huggingface-cli download internlm/internlm3-8b-instruct") as e:
        load_model_info("internlm/internlm3-8b-instruct")
    assert str(tmp_path) in str(e.value)


def test_directory_without_weights(tmp_path: Path, internlm2_dir: Path):
    shutil.copy(internlm2_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelDirError, match="no \\*.safetensors"):
        load_model_info(tmp_path)


def test_generation_config_is_read(internlm2_dir: Path):
    info = load_model_info(internlm2_dir)
    assert info.generation_config.get("eos_token_id")


# --- multimodal checkpoints served as their language model ------------------------------------------


@pytest.fixture(scope="module")
def qwen3_moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from interndeploy.testing.tiny_archs import build_qwen3_moe_dir

    return build_qwen3_moe_dir(tmp_path_factory.mktemp("moe") / "m")


def _prefill_logits(model_dir: Path):
    from interndeploy.testing.compare import load_our_model, random_prompts, run_paged

    return run_paged(load_our_model(model_dir), random_prompts(512, [9, 4]), decode_steps=2)


def test_intern_s1_checkpoint_loads_its_language_model(tmp_path: Path, qwen3_moe_dir: Path):
    from interndeploy.testing.tiny_archs import wrap_as_multimodal

    d = wrap_as_multimodal(qwen3_moe_dir, tmp_path / "s1", "interns1")
    info = load_model_info(d)
    assert info.architecture == "Qwen3MoeForCausalLM"  # from text_config's model_type: it names none
    assert info.model_type == "interns1" and info.serve_vision  # the chat template follows the checkpoint
    assert info.root_config["architectures"] == ["InternS1ForConditionalGeneration"]
    assert info.config["num_experts"] == 8 and info.config["eos_token_id"] is not None
    plain, wrapped = _prefill_logits(qwen3_moe_dir), _prefill_logits(d)
    assert wrapped.tokens == plain.tokens
    for a, b in zip(plain.prefill_logits, wrapped.prefill_logits, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_internvl_chat_checkpoint_loads_its_language_model(tmp_path: Path, internlm2_dir: Path):
    """InternVLChatModel (remote code): llm_config, weights under language_model.*, InternLM2 names inside."""
    from interndeploy.testing.tiny_archs import wrap_as_multimodal

    d = wrap_as_multimodal(internlm2_dir, tmp_path / "vl", "internvl")
    info = load_model_info(d)
    assert info.architecture == "InternLM2ForCausalLM" and info.weight_prefixes == (("language_model.", ""),)
    plain, wrapped = _prefill_logits(internlm2_dir), _prefill_logits(d)
    for a, b in zip(plain.prefill_logits, wrapped.prefill_logits, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_intern_s1_fp8_takes_the_top_level_quantization_config(tmp_path: Path):
    from interndeploy.quant.fp8 import Fp8LinearMethod
    from interndeploy.testing.compare import load_our_model
    from interndeploy.testing.tiny_archs import build_qwen3_dir, quantize_dir_fp8, wrap_as_multimodal

    fp8 = quantize_dir_fp8(build_qwen3_dir(tmp_path / "m"), tmp_path / "fp8", (16, 16))
    d = wrap_as_multimodal(fp8, tmp_path / "s1", "interns1")
    assert "quantization_config" not in json.loads((d / "config.json").read_text())["text_config"]
    info = load_model_info(d)
    assert info.config["quantization_config"]["quant_method"] == "fp8"
    model = load_our_model(d)
    assert isinstance(model.model.layers[0].mlp.gate_up_proj.quant_method, Fp8LinearMethod)
    plain, wrapped = _prefill_logits(fp8), _prefill_logits(d)
    for a, b in zip(plain.prefill_logits, wrapped.prefill_logits, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_language_model_only_serves_no_vision(tmp_path: Path, qwen3_moe_dir: Path):
    from interndeploy.testing.tiny_archs import wrap_as_multimodal

    d = wrap_as_multimodal(qwen3_moe_dir, tmp_path / "s1", "interns1")
    vl = load_model_info(d)
    assert vl.architecture == "Qwen3MoeForCausalLM" and vl.serve_vision and not vl.language_model_only
    info = load_model_info(d, language_model_only=True)
    assert info.architecture == "Qwen3MoeForCausalLM" and info.weight_prefixes
    assert info.language_model_only and not info.serve_vision


def test_multimodal_config_without_its_language_config(tmp_path: Path, internlm2_dir: Path):
    shutil.copytree(internlm2_dir, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architectures": ["InternVLChatModel"]}))
    with pytest.raises(ModelDirError, match="InternVLChatModel config without the llm_config"):
        load_model_info(tmp_path / "m")


def test_language_model_only_flag():
    import argparse

    from interndeploy.cli.args import add_engine_args, engine_config_from_args

    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert engine_config_from_args(p.parse_args(["--language-model-only"])).language_model_only
    assert not engine_config_from_args(p.parse_args([])).language_model_only
