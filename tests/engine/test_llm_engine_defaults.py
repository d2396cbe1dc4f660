"""Engine defaults that depend on the device, and the step statistics the benchmarks read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interndeploy import EngineConfig
from interndeploy.bench.throughput import engine_step_figures
from interndeploy.engine.llm_engine import EngineStats, LLMEngine, default_max_batch_size
from interndeploy.engine.request import EngineRequest
from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.model_dir import load_model_info
from interndeploy.tokenizer import Tokenizer


def _engine(model_dir: Path, **cfg) -> LLMEngine:
    info = load_model_info(str(model_dir))
    config = EngineConfig(block_size=16, cache_max_entry_count=64, **cfg)
    return LLMEngine(info, config, Tokenizer.from_dir(info.path))


@pytest.mark.parametrize(
    ("name", "size"),
    [("NVIDIA H100 80GB HBM3", 1024), ("NVIDIA H200", 1024), ("NVIDIA A100-SXM4-80GB", 384), ("Tesla T4", 256)],
)
def test_max_batch_size_by_gpu_as_lmdeploy(monkeypatch: pytest.MonkeyPatch, name: str, size: int) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert default_max_batch_size(torch.device("cuda")) == size


def test_max_batch_size_on_cpu_and_when_given(internlm2_dir: Path) -> None:
    assert default_max_batch_size(torch.device("cpu")) == 128
    assert _engine(internlm2_dir).max_batch_size == 128
    assert _engine(internlm2_dir, max_batch_size=7).max_batch_size == 7


def test_async_scheduling_default_follows_the_device(internlm2_dir: Path) -> None:
    engine = _engine(internlm2_dir)
    assert engine.async_scheduling is False  # CPU: the forward runs inside launch()
    engine.runner.device = torch.device("cuda")  # only the decision is checked: nothing runs
    assert engine._want_async(EngineConfig()) is True
    assert engine._want_async(EngineConfig(async_scheduling=False)) is False
    engine.executor.supports_async = False  # a data-parallel executor
    assert engine._want_async(EngineConfig(async_scheduling=True)) is False


def test_step_statistics_count_steps_and_waits(internlm2_dir: Path) -> None:
    engine = _engine(internlm2_dir)
    before = EngineStats(**{f: getattr(engine.stats, f) for f in engine.stats.__slots__})
    for i in range(3):
        engine.add_request(EngineRequest(f"r{i}", [5, 6, 7, 8 + i], SamplingParams(max_new_tokens=4, ignore_eos=True)))
    while engine.has_work:
        engine.step()
    stats = engine.stats
    assert stats.num_steps >= 4 and stats.generated_tokens == 12
    assert stats.step_s >= stats.device_wait_s >= 0.0
    figures = engine_step_figures(before, stats)
    assert figures["engine_steps"] == stats.num_steps
    assert 0.0 <= figures["host_fraction"] <= 1.0
    assert figures["host_ms_per_step"] <= figures["step_ms_mean"]
    assert figures["preemptions"] == 0
    assert engine_step_figures(stats, stats) == {}
