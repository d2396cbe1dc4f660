"""Bad input: one clear error, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interndeploy import GenerationConfig
from interndeploy.config import ConfigError


def test_missing_config_json(tmp_path: Path):
    from interndeploy import pipeline

    with pytest.raises(ValueError, match="has no config.json"):
        pipeline(str(tmp_path))


def test_unknown_architecture(tmp_path: Path, internlm2_dir: Path):
    d = tmp_path / "m"
    shutil.copytree(internlm2_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["FancyNewForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    from interndeploy import pipeline

    with pytest.raises(ValueError, match="FancyNewForCausalLM"):
        pipeline(str(d))


def test_prompt_longer_than_session_len(internlm2_pipe):
    with pytest.raises(ValueError, match="session_len"):
        internlm2_pipe("word " * 5000)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"temperature": -0.5}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"top_p": 0.0}, "top_p"),
     ({"top_k": -1}, "top_k"), ({"n": 0}, "n"), ({"min_p": 2.0}, "min_p")],
)
def test_invalid_generation_config(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**kwargs)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interndeploy.cli.main", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_cli_errors_are_one_line(tmp_path: Path):
    r = run_cli("chat", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    r = run_cli("chat", str(tmp_path))
    assert r.returncode == 1 and "no config.json" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("chat", "internlm/internlm2_5-7b-chat")
    assert r.returncode == 1 and "Hugging Face cache" in r.stderr and "Traceback" not in r.stderr


def test_cli_inconsistent_parallel_flags_are_one_line(internlm2_dir: Path):
    r = run_cli("chat", str(internlm2_dir), "--ep", "3")
    assert r.returncode == 1 and "ep=3 must equal tp x dp" in r.stderr and "Traceback" not in r.stderr
