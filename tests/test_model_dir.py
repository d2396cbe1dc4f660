"""Finding model directories: local paths and the offline Hugging Face cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
