"""Tensor, expert and data parallelism on CPU (gloo): greedy tokens equal the single-rank engine's.

    TP=2 (two processes)         dense InternLM2 (vocab not a multiple of tp, one kv head replicated on both
                                 ranks) and Qwen3-MoE (experts' intermediate dim split)
    TP=2 + EP=2                  Qwen3-MoE with the experts split over the two ranks
    DP=2 + EP=2                  two engines in two processes, each with its own prompts and lengths, sharing
                                 the experts through all-to-all
    TP=2 on Ray                  a local Ray cluster on 127.0.0.1, the worker rank as an actor
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from interndeploy import EngineConfig, GenerationConfig, pipeline

PROMPTS = ["Hello there, how are you today?", "Tell me a story", "a", "the quick brown fox jumps over the lazy dog"]
TOKENS = 6


def _greedy(model_dir: Path, prompts: list[str] = PROMPTS, **kw) -> list[list[int]]:
    cfg = EngineConfig(block_size=16, cpu_kv_budget_gib=0.1, session_len=256, **kw)
    pipe = pipeline(str(model_dir), backend_config=cfg)
    try:
        outs = pipe(prompts, gen_config=GenerationConfig(max_new_tokens=TOKENS, ignore_eos=True), do_preprocess=False)
        return [o.token_ids for o in outs]
    finally:
        pipe.close()


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from interndeploy.testing.tiny_models import build_internlm2_dir

    # 1001 is odd (vocab padded to 2 x 501), and one kv head is shared by both ranks
    return build_internlm2_dir(tmp_path_factory.mktemp("tp-dense"), num_key_value_heads=1, vocab_size=1001, seed=3)


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from interndeploy.testing.tiny_archs import build_qwen3_moe_dir

    return build_qwen3_moe_dir(tmp_path_factory.mktemp("tp-moe"))


def test_tp2_dense_equals_tp1(dense_dir: Path) -> None:
    assert _greedy(dense_dir, tp=2) == _greedy(dense_dir)


def test_tp2_and_ep2_moe_equal_tp1(moe_dir: Path) -> None:
    ref = _greedy(moe_dir)
    assert _greedy(moe_dir, tp=2) == ref
    assert _greedy(moe_dir, tp=2, ep=2) == ref


def test_dp2_ep2_engines_equal_tp1(moe_dir: Path) -> None:
    from interndeploy.testing.parallel import run_dp_engines

    ref = _greedy(moe_dir, max_batch_size=4)
    # engine 0 has three prompts and stops first; engine 1 one prompt, so it runs dummy steps while 0 prefills
    got = run_dp_engines(moe_dir, [[PROMPTS[0], PROMPTS[2], PROMPTS[3]], [PROMPTS[1]]], [TOKENS, TOKENS + 3],
                         block_size=16, cpu_kv_budget_gib=0.1, session_len=256)
    assert got[0] == [ref[0], ref[2], ref[3]], got
    assert got[1][0][:TOKENS] == ref[1], got


def test_tp2_on_local_ray_cluster(dense_dir: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        assert _greedy(dense_dir, prompts=PROMPTS[:2], tp=2, distributed_executor_backend="ray") == \
            _greedy(dense_dir, prompts=PROMPTS[:2])
    finally:
        ray.shutdown()


def test_bad_parallel_configs_say_what_to_do() -> None:
    from interndeploy.config import ConfigError

    with pytest.raises(ConfigError, match="ep=2 must equal tp x dp"):
        EngineConfig(ep=2)
    with pytest.raises(ConfigError, match="need tp=1"):
        EngineConfig(tp=2, dp=2, ep=4)
    with pytest.raises(ConfigError, match="uni runs one rank"):
        EngineConfig(tp=2, distributed_executor_backend="uni")


def test_tp2_with_async_scheduling_equals_tp1(dense_dir: Path) -> None:
    # steps launched before the previous step's tokens are read: every rank takes the pending input ids from
    # rank 0's sampled tokens, broadcast on the device after each step
    prompts = PROMPTS + [f"prompt {i} " * (1 + i % 5) for i in range(6)]
    assert _greedy(dense_dir, prompts, tp=2, async_scheduling=True) == _greedy(dense_dir, prompts)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="shm channel is x86-64 only")
def test_tp2_with_shared_memory_step_messages_equals_tp1(dense_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the GPU default (rank 0's step messages through shared memory), forced on CPU; async too, so that the
    # channel carries steps launched ahead
    monkeypatch.setenv("INTERNDEPLOY_TP_CONTROL", "shm")
    prompts = PROMPTS + [f"prompt {i} " * (1 + i % 5) for i in range(6)]
    ref = _greedy(dense_dir, prompts)
    assert _greedy(dense_dir, prompts, tp=2) == ref
    assert _greedy(dense_dir, prompts, tp=2, async_scheduling=True) == ref


def test_profiling_covers_every_tp_rank(dense_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # INTERNDEPLOY_PROFILE_ENGINE=FILE: rank 0's engine thread to FILE, each worker's step loop to FILE.rankN
    import pstats

    path = tmp_path / "engine.prof"
    monkeypatch.setenv("INTERNDEPLOY_PROFILE_ENGINE", str(path))
    assert len(_greedy(dense_dir, PROMPTS[:2], tp=2)) == 2
    worker = pstats.Stats(str(path.with_name("engine.prof.rank1")))
    assert any(name == "run_step" for _, _, name in worker.stats)  # type: ignore[attr-defined]
    engine = pstats.Stats(str(path))
    assert any(name == "step" for _, _, name in engine.stats)  # type: ignore[attr-defined]
