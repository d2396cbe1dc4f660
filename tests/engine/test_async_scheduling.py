"""Async scheduling (step n+1 launched before step n's tokens are read) gives what running steps in turn gives.

The engine runs on the CPU here with `async_scheduling=True`: the device work is synchronous, but the
engine's bookkeeping lags one step exactly as on a GPU (pending tokens taken from the previous step's
sampled tensor, sequences finished at step n already scheduled in step n+1, blocks freed under them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from interndeploy import EngineConfig, GenerationConfig
from interndeploy.engine.llm_engine import LLMEngine
from interndeploy.engine.request import build_request
from interndeploy.model_dir import load_model_info
from interndeploy.tokenizer import Tokenizer

PROMPTS = [
    "Hello there, how are you today?",
    "Tell me a story",
    "上海有哪些好玩的地方？请告诉我五个景点",
    "a",
    "The quick brown fox jumps over the lazy dog and keeps running far away",
    "One two three four five six seven eight nine ten eleven twelve",
]


@dataclass
class Result:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None


def make_engine(model_dir: Path, **cfg) -> LLMEngine:
    info = load_model_info(str(model_dir))
    tokenizer = Tokenizer.from_dir(info.path)
    cfg = {"block_size": 16, "cpu_kv_budget_gib": 0.25, "device": "cpu", **cfg}
    return LLMEngine(info, EngineConfig(**cfg), tokenizer, [tokenizer.eos_token_id])


def run(
    engine: LLMEngine,
    gens: list[GenerationConfig],
    abort_at: dict[int, int] | None = None,
    prompts: list[str] = PROMPTS,
) -> tuple[dict[tuple[int, int], Result], dict[str, int]]:
    """Run one request per prompt to the end; abort request i after abort_at[i] steps. Also counts steps that
    were launched before the previous one was read, and tokens dropped because their sequence had ended."""
    tok = engine.tokenizer
    counts = {"overlapped": 0, "dropped": 0}
    update = engine.scheduler.update

    def counting_update(out, sampled):
        counts["dropped"] += sum(1 for it in out.scheduled if it.samples and it.seq.is_finished)
        update(out, sampled)

    engine.scheduler.update = counting_update
    for i, (prompt, gen) in enumerate(zip(prompts, gens, strict=True)):
        req = build_request(
            str(i),
            tok.encode(prompt),
            gen,
            tok,
            session_len=engine.session_len,
            eos_token_ids=[tok.eos_token_id],
            compile_grammar=engine.grammar.compile,
        )
        engine.add_request(req)
    results: dict[tuple[int, int], Result] = {}

    def absorb(outputs) -> None:
        for out in outputs:
            assert out.error is None, out.error
            r = results.setdefault((int(out.request_id), out.index), Result())
            assert r.finish_reason is None, "output after the finish"
            r.token_ids += out.token_ids
            r.text += out.text
            r.logprobs += out.logprobs or []
            r.finish_reason = out.finish_reason if out.finished else None

    steps = 0
    while engine.has_work:
        for i, at in (abort_at or {}).items():
            if steps == at:
                absorb(engine.abort_request(str(i)))
        absorb(engine.step())
        counts["overlapped"] += engine._inflight is not None
        steps += 1
        assert steps < 2000
    bm = engine.block_manager
    assert not engine.requests and not engine.by_seq
    assert bm.num_free_blocks == bm.num_blocks  # every block free or evictable
    bm.check([])
    return results, counts


def compare(model_dir: Path, gens: list[GenerationConfig], abort_at: dict[int, int] | None = None, **cfg):
    off, _ = run(make_engine(model_dir, async_scheduling=False, **cfg), gens, abort_at)
    on, counts = run(make_engine(model_dir, async_scheduling=True, **cfg), gens, abort_at)
    assert counts["overlapped"] > 0
    assert set(on) == set(off)
    for key in off:
        if abort_at and key[0] in abort_at:  # an abort lands one step later or earlier: a prefix either way
            a, b = on[key].token_ids, off[key].token_ids
            assert a[: len(b)] == b[: len(a)], key
            assert on[key].finish_reason == off[key].finish_reason == "abort"
            continue
        assert on[key].token_ids == off[key].token_ids, key
        assert on[key].text == off[key].text, key
        assert on[key].finish_reason == off[key].finish_reason, key
        assert len(on[key].logprobs) == len(off[key].logprobs)
        for x, y in zip(on[key].logprobs, off[key].logprobs, strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
            assert [t for t, _ in x.top] == [t for t, _ in y.top]
    return on, counts


@pytest.fixture(scope="module")
def free_run(internlm2_dir: Path) -> dict[int, Result]:
    """What each prompt generates greedily with nothing stopping it: where to put stops mid-output."""
    gens = [GenerationConfig(max_new_tokens=24, ignore_eos=True)] * len(PROMPTS)
    results, _ = run(make_engine(internlm2_dir, async_scheduling=False), gens)
    return {i: results[(i, 0)] for i in range(len(PROMPTS))}


def mixed_gens(free_run: dict[int, Result], max_new: int = 20) -> list[GenerationConfig]:
    """Stops landing mid-batch (token, string), short and long limits, logprobs, n > 1 greedy and seeded."""
    stop_token = free_run[0].token_ids[5]
    text = free_run[1].text
    stop_string = text[len(text) // 3 : len(text) // 3 + 3]
    assert stop_string.strip()
    base = GenerationConfig(max_new_tokens=max_new, ignore_eos=True)
    return [
        base.replace(stop_token_ids=[stop_token], ignore_eos=False, logprobs=2),
        base.replace(stop_words=[stop_string]),
        base.replace(max_new_tokens=1),
        base.replace(max_new_tokens=7, logprobs=0),
        base.replace(n=2, do_sample=True, temperature=1.0, top_k=0, random_seed=5, min_new_tokens=3),
        base.replace(n=2, max_new_tokens=max_new - 3),
    ]


def test_mixed_batch_equal_and_lag_exercised(internlm2_dir: Path, free_run):
    on, counts = compare(internlm2_dir, mixed_gens(free_run))
    assert on[(0, 0)].finish_reason == "stop" and len(on[(0, 0)].token_ids) <= 5
    assert on[(1, 0)].finish_reason == "stop"
    assert len(on[(2, 0)].token_ids) == 1 and on[(2, 0)].finish_reason == "length"
    assert on[(5, 0)].token_ids == on[(5, 1)].token_ids  # greedy n=2
    assert counts["dropped"] > 0  # a stop at step n while step n+1 already ran for that sequence


@pytest.mark.parametrize(
    "cfg",
    [
        {"max_prefill_token_num": 5},  # chunked prefill, decodes and chunks in one step
        {"cache_max_entry_count": 6, "max_batch_size": 8},  # 6 blocks of 16: preemption
        {"max_batch_size": 2},  # requests admitted as others end
        {"enable_prefix_caching": True, "max_prefill_token_num": 7},
    ],
    ids=["chunked", "preempt", "batch2", "prefix-cache"],
)
def test_scheduling_variants_equal(internlm2_dir: Path, free_run, cfg):
    compare(internlm2_dir, mixed_gens(free_run, max_new=30 if "cache_max_entry_count" in cfg else 20), **cfg)


def test_preemption_happens_under_async(internlm2_dir: Path, free_run):
    engine = make_engine(internlm2_dir, async_scheduling=True, cache_max_entry_count=6, max_batch_size=8)
    gens = [GenerationConfig(max_new_tokens=40, ignore_eos=True)] * len(PROMPTS)
    results, _ = run(engine, gens)
    assert engine.stats.num_preemptions > 0
    for i in range(len(PROMPTS)):
        assert results[(i, 0)].token_ids[:24] == free_run[i].token_ids


def test_aborts_mid_run_free_everything(internlm2_dir: Path, free_run):
    gens = mixed_gens(free_run)
    compare(internlm2_dir, gens, abort_at={1: 3, 4: 5, 5: 0})
    compare(internlm2_dir, gens, abort_at={0: 2, 3: 4}, max_prefill_token_num=5, max_batch_size=3)


def test_host_state_requests_fall_back_and_stay_equal(internlm2_dir: Path, free_run):
    """Penalties and grammars need the last token on the host: those steps are read back before the next."""
    base = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    gens = mixed_gens(free_run)[:4] + [
        base.replace(repetition_penalty=1.3, presence_penalty=0.5),
        GenerationConfig(max_new_tokens=48, response_format={"type": "regex_schema", "regex_schema": "20[0-9]{2}"}),
    ]
    on, _ = compare(internlm2_dir, gens)
    assert on[(5, 0)].finish_reason == "stop"


def test_session_len_limit_is_not_overrun(internlm2_dir: Path):
    """A sequence whose pending token reaches session_len or max_new_tokens gets no further step (no position
    past the session, no token computed to be dropped)."""
    engine = make_engine(internlm2_dir, async_scheduling=True, session_len=60)
    prompt_len = len(engine.tokenizer.encode(PROMPTS[4]))
    gens = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in (100, 3, 1, 100, 100, 9)]
    results, counts = run(engine, gens)
    assert counts["overlapped"] > 0 and counts["dropped"] == 0
    assert len(results[(4, 0)].token_ids) == 60 - prompt_len
    assert results[(4, 0)].finish_reason == "length"


def test_default_is_off_on_cpu(internlm2_dir: Path):
    assert make_engine(internlm2_dir).async_scheduling is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("eager", [False, True], ids=["cuda-graphs", "eager"])
def test_cuda_async_equal(internlm2_dir: Path, eager: bool):
    gens = [GenerationConfig(max_new_tokens=n, ignore_eos=True, logprobs=1) for n in (3, 9, 17, 1, 12, 20)]
    cfg = {"device": "cuda", "eager_mode": eager, "dtype": "float32", "cache_max_entry_count": 256}
    off, _ = run(make_engine(internlm2_dir, async_scheduling=False, **cfg), gens)
    on, counts = run(make_engine(internlm2_dir, async_scheduling=True, **cfg), gens)
    assert counts["overlapped"] > 0
    assert {k: r.token_ids for k, r in on.items()} == {k: r.token_ids for k, r in off.items()}
