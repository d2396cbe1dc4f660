"""Prefill and mixed steps replayed as CUDA graphs split at attention give what the eager forward gives.

On the tiny InternLM2 (and one with dynamic-NTK rotary, which reads the tokens' sequence lengths inside the
pieces): the hidden states of one step, for token counts on, just past and under a bucket, and the greedy tokens
of a whole engine run with chunked prefill beside decode rows, prefix-cache hits and steps too long for the
graphs, against eager mode, in fp32 and bf16. (Dynamic NTK in bf16 with prefix-cache hits parts from eager mode
in the decode graphs alone, with or without the piecewise ones: fp32 here.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interndeploy import EngineConfig, GenerationConfig, pipeline
from interndeploy.config import ConfigError
from interndeploy.testing.attention import PagedBatch
from interndeploy.testing.tiny_models import build_internlm2_dir
from interndeploy.worker.forward_context import forward_context
from interndeploy.worker.piecewise_graph import bucket_for, capture_session, pad_step, token_buckets

PROMPTS = [
    "Hello there, how are you today?",
    "Tell me a story about a dragon who lived in a castle by the sea, and the knight who came to visit it",
    "a",
    "上海有哪些好玩的地方？请告诉我五个景点",
    "Tell me a story about a dragon who lived in a castle by the sea, and then tell me another one",
    "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " * 3,
]


def _generate(model_dir: Path, dtype: str, eager: bool) -> tuple[list[list[int]], int]:
    cfg = EngineConfig(device="cuda", dtype=dtype, eager_mode=eager, cache_max_entry_count=256, block_size=16,
                       max_prefill_token_num=48, enable_prefix_caching=True, prefill_graph_max_tokens=96,
                       session_len=256)
    pipe = pipeline(str(model_dir), backend_config=cfg)
    try:
        gen = GenerationConfig(max_new_tokens=24, ignore_eos=True)
        tokens = [o.token_ids for o in pipe(PROMPTS, gen_config=gen, do_preprocess=False)]
        tokens += [o.token_ids for o in pipe(PROMPTS[1:3], gen_config=gen, do_preprocess=False)]  # cache hits
        piecewise = pipe.engine.engine.runner.piecewise
        return tokens, (piecewise.replays if piecewise is not None else 0)
    finally:
        pipe.close()


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "rope"), [("float32", "default"), ("bfloat16", "default"), ("float32", "dynamic")])
def test_engine_greedy_equal_to_eager(cuda: str, tmp_path: Path, dtype: str, rope: str) -> None:
    scaling = {"type": "dynamic", "factor": 2.0} if rope == "dynamic" else None
    d = build_internlm2_dir(tmp_path / "m", max_position_embeddings=64, rope_scaling=scaling)
    eager, none = _generate(d, dtype, eager=True)
    graphs, replays = _generate(d, dtype, eager=False)
    assert none == 0 and replays > 0
    assert graphs == eager


@pytest.mark.gpu
@torch.inference_mode()
def test_step_hidden_matches_eager(cuda: str, tmp_path: Path) -> None:
    d = build_internlm2_dir(tmp_path / "m", hidden_size=256, num_attention_heads=8, num_key_value_heads=2)
    cfg = EngineConfig(device="cuda", dtype="bfloat16", cache_max_entry_count=64, block_size=16,
                       prefill_graph_max_tokens=256)
    pipe = pipeline(str(d), backend_config=cfg)
    try:
        runner = pipe.engine.engine.runner
        graphs = runner.piecewise
        assert graphs is not None and graphs.buckets[-1] == 256
        gen = torch.Generator().manual_seed(0)
        for lens in ([16], [17, 3], [5, 60, 100], [256], [1, 1, 40]):
            batch = PagedBatch(lens, 16, device=cuda)
            meta, positions = batch.step(lens)
            ids = torch.randint(5, 100, (sum(lens),), generator=gen).to(cuda)
            out = graphs.run(ids, positions, meta).clone()
            with forward_context(meta):
                ref = runner.model(ids, positions)
            torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    finally:
        pipe.close()


def test_buckets_and_padding() -> None:
    assert token_buckets(2048)[-1] == 2048 and token_buckets(100)[-1] == 100 and token_buckets(10_000)[-1] == 2048
    buckets = token_buckets(300)
    assert bucket_for(buckets, 1) == 16 and bucket_for(buckets, 17) == 32 and bucket_for(buckets, 300) == 300
    assert bucket_for(buckets, 301) is None
    batch = PagedBatch([5, 9], 4)
    meta, positions = batch.step([5, 9])
    ids = torch.arange(14) + 3
    pids, ppos, pmeta = pad_step(ids, positions, meta, 16)
    assert pids.tolist() == ids.tolist() + [0, 0] and ppos.tolist() == positions.tolist() + [0, 0]
    assert pmeta.slot_mapping.tolist() == meta.slot_mapping.tolist() + [-1, -1]
    assert pmeta.token_seq_lens.tolist() == meta.token_seq_lens.tolist() + [1, 1]
    assert pmeta.query_start_loc is meta.query_start_loc  # attention still sees the real rows only
    with pytest.raises(ConfigError, match="prefill_graph_max_tokens"):
        EngineConfig(prefill_graph_max_tokens=-1)


@pytest.mark.gpu
def test_uncapturable_model_falls_back_to_eager(cuda: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer that reads a device value on the host cannot be captured: the engine starts with eager prefill
    steps (a warning) and answers as eager mode does."""
    from interndeploy.models import llama

    d = build_internlm2_dir(tmp_path / "m")
    eager, _ = _generate(d, "float32", eager=True)
    forward = llama.LlamaMLP.forward

    def syncing_forward(self, x: torch.Tensor) -> torch.Tensor:
        if capture_session() is not None:
            float(x.sum())  # a host sync: not allowed while a stream captures
        return forward(self, x)

    monkeypatch.setattr(llama.LlamaMLP, "forward", syncing_forward)
    graphs, replays = _generate(d, "float32", eager=False)
    assert replays == 0 and graphs == eager
