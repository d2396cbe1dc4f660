"""Shared fixtures: tiny model directories built once per session (random weights, trained tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cuda() -> str:
    """The CUDA device for tests of the Triton path; skips without Triton or a GPU."""
    pytest.importorskip("triton")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return "cuda"


@pytest.fixture(scope="session")
def internlm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from interndeploy.testing.tiny_models import build_internlm2_dir

    return build_internlm2_dir(tmp_path_factory.mktemp("internlm2"), seed=0)


@pytest.fixture(scope="session")
def internlm2_pipe(internlm2_dir: Path):
    from interndeploy import EngineConfig, pipeline

    pipe = pipeline(str(internlm2_dir), backend_config=EngineConfig(block_size=16, cpu_kv_budget_gib=0.25))
    yield pipe
    pipe.close()
