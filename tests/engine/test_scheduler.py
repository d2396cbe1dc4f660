"""Scheduler + block manager driven with fake model outputs (no torch)."""

from __future__ import annotations

import random

from interndeploy.engine.block_manager import BlockManager
from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.engine.scheduler import Scheduler
from interndeploy.engine.sequence import FinishReason, Sequence, SequenceStatus


def make(num_blocks=16, block_size=4, max_bs=8, budget=32, prefix=False) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size, prefix), max_bs, budget)


def seq(n: int, max_new: int = 4, start: int = 100) -> Sequence:
    return Sequence(list(range(start, start + n)), SamplingParams(max_new_tokens=max_new))


def run_step(s: Scheduler, token: int = 7):
    out = s.schedule()
    sampled = {it.seq.seq_id: token for it in out.scheduled if it.samples}
    s.update(out, sampled)
    for it in out.scheduled:
        q = it.seq
        if it.seq.seq_id in sampled and q.num_output_tokens >= q.params.max_new_tokens:
            s.finish(q, FinishReason.LENGTH)
    return out


def live(s: Scheduler) -> list[Sequence]:
    return [q for q in [*s.running, *s.waiting] if q.block_table]


def test_prefill_then_decode():
    s = make()
    a = seq(6)
    s.add(a)
    out = s.schedule()
    assert [(it.seq, it.num_new_tokens) for it in out.scheduled] == [(a, 6)]
    assert out.scheduled[0].samples
    s.update(out, {a.seq_id: 5})
    assert a.num_computed_tokens == 6 and a.token_ids[-1] == 5
    out = s.schedule()
    assert out.num_decode_tokens == 1 and out.scheduled[0].num_new_tokens == 1
    s.block_manager.check(live(s))


def test_chunked_prefill_respects_budget():
    s = make(budget=5)
    a = seq(12)
    s.add(a)
    chunks = []
    while not a.output_token_ids:
        out = run_step(s)
        chunks.append(out.scheduled[0].num_new_tokens)
        assert out.num_prefill_tokens <= 5
    assert chunks == [5, 5, 2]


def test_decodes_do_not_starve_and_batch_cap():
    s = make(num_blocks=64, max_bs=3)
    seqs = [seq(3) for _ in range(5)]
    for q in seqs:
        s.add(q)
    out = s.schedule()
    assert len(out.scheduled) == 3
    assert len(s.waiting) == 2


def test_preemption_by_recompute_and_resume():
    s = make(num_blocks=4, block_size=4, max_bs=4, budget=64)
    a, b = seq(7, max_new=6), seq(7, max_new=6, start=200)
    s.add(a)
    s.add(b)
    preempted = False
    for _ in range(60):
        if not s.has_work:
            break
        out = run_step(s)
        preempted |= bool(out.preempted)
        s.block_manager.check(live(s))
    assert preempted
    assert a.is_finished and b.is_finished
    assert a.num_output_tokens == 6 and b.num_output_tokens == 6
    assert s.block_manager.num_free_blocks == 4


def test_sequence_larger_than_cache_finishes_with_length():
    s = make(num_blocks=2, block_size=4)
    a = seq(20)
    s.add(a)
    for _ in range(10):
        if not s.has_work:
            break
        run_step(s)
    assert a.is_finished and a.finish_reason == FinishReason.LENGTH
    assert s.block_manager.num_free_blocks == 2


def test_prefix_cache_hit_reuses_blocks():
    s = make(num_blocks=16, block_size=4, prefix=True)
    a = seq(10, max_new=2)
    s.add(a)
    while s.has_work:
        run_step(s)
    b = seq(10, max_new=2)  # same prompt
    s.add(b)
    out = s.schedule()
    # two full blocks (8 tokens) cached; the rest recomputed
    assert b.num_cached_tokens == 8
    assert out.scheduled[0].num_new_tokens == 2
    assert s.block_manager.stats.hit_tokens == 8


def test_abort_frees_blocks():
    s = make()
    a = seq(9)
    s.add(a)
    run_step(s)
    assert s.block_manager.num_used_blocks > 0
    s.finish(a, FinishReason.ABORT)
    assert a.status == SequenceStatus.FINISHED
    assert s.block_manager.num_free_blocks == 16
    s.block_manager.check([])


def test_random_workload_keeps_accounting():
    rng = random.Random(0)
    s = make(num_blocks=12, block_size=4, max_bs=6, budget=16, prefix=True)
    shared = list(range(50, 58))
    all_seqs = []
    for _step in range(400):
        if rng.random() < 0.3:
            prompt = (shared if rng.random() < 0.5 else []) + [rng.randrange(1000) for _ in range(rng.randint(1, 14))]
            q = Sequence(prompt, SamplingParams(max_new_tokens=rng.randint(1, 8)))
            all_seqs.append(q)
            s.add(q)
        if rng.random() < 0.05 and s.running:
            s.finish(rng.choice(s.running), FinishReason.ABORT)
        if s.has_work:
            run_step(s, token=rng.randrange(1000))
        s.block_manager.check(live(s))
    while s.has_work:
        run_step(s)
    s.block_manager.check([])
    assert s.block_manager.num_free_blocks == 12
    assert all(q.is_finished for q in all_seqs)
