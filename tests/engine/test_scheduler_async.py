"""The scheduler with a one-step lag (async scheduling), driven by fake model outputs (no torch).

Each iteration: schedule n+1 -> on_launched(n+1) -> update(n) -> postprocess n, as LLMEngine.step does.
The fake model samples `token_for(seq, position)`, a function of the sequence and position only, so
the tokens must come out the same with and without the lag whatever the batches were.
"""

from __future__ import annotations

import random

from interndeploy.engine.block_manager import BlockManager
from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.engine.scheduler import Scheduler, SchedulerOutput
from interndeploy.engine.sequence import FinishReason, Sequence

STOP = 999


def make(num_blocks=16, block_size=4, max_bs=8, budget=32, prefix=False) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size, prefix), max_bs, budget)


def token_for(seq: Sequence, position: int) -> int:
    """The fake model's token at `position`; STOP after 3 outputs of sequences whose prompt starts odd."""
    if seq.token_ids[0] % 2 and position - seq.num_prompt_tokens == 3:
        return STOP
    return (seq.token_ids[0] * 31 + position * 7) % 500


def fake_sample(out: SchedulerOutput) -> dict[int, int]:
    """At launch: the token each sampling sequence gets (its position counts the pending token)."""
    return {
        it.seq.seq_id: token_for(it.seq, len(it.seq.token_ids) + it.seq.num_pending_tokens)
        for it in out.scheduled
        if it.samples
    }


def postprocess(s: Scheduler, out: SchedulerOutput, sampled: dict[int, int]) -> None:
    s.update(out, sampled)
    for it in out.scheduled:
        q = it.seq
        if q.is_finished or q.seq_id not in sampled:
            continue
        if q.token_ids[-1] == STOP:
            s.finish(q, FinishReason.STOP)
        elif q.num_output_tokens >= q.params.max_new_tokens or len(q) >= q.max_total_tokens:
            s.finish(q, FinishReason.LENGTH)


def live(s: Scheduler) -> list[Sequence]:
    return [q for q in [*s.running, *s.waiting] if q.block_table]


def drive(
    s: Scheduler,
    arrivals: dict[int, list[Sequence]],
    lag: bool,
    aborts: dict[int, int] | None = None,
    max_steps: int = 500,
) -> dict:
    inflight = None
    stats = {"dropped": 0, "preempted_pending": 0}
    step = 0
    while step < max_steps and (s.has_work or inflight or step <= max(arrivals)):
        for q in arrivals.get(step, []):
            s.add(q)
        for idx, at in (aborts or {}).items():
            if at == step:
                s.finish(arrivals[0][idx], FinishReason.ABORT)
        out = s.schedule()
        stats["preempted_pending"] += sum(1 for q in out.preempted if q.num_pending_tokens)
        launched = None
        if not out.is_empty:
            launched = (out, fake_sample(out))
            s.on_launched(out)
        if inflight is not None:
            stats["dropped"] += sum(1 for it in inflight[0].scheduled if it.samples and it.seq.is_finished)
            postprocess(s, *inflight)
        inflight = None
        if launched is not None:
            if lag:
                inflight = launched
            else:
                postprocess(s, *launched)
        s.block_manager.check(live(s))
        step += 1
    return stats


def workload(seed: int, n: int = 14) -> dict[int, list[Sequence]]:
    rng = random.Random(seed)
    arrivals: dict[int, list[Sequence]] = {}
    shared = [2, 4, 6, 8, 10, 12, 14, 16]
    for i in range(n):
        prompt = (shared if rng.random() < 0.4 else []) + [rng.randrange(1, 400) for _ in range(rng.randint(1, 13))]
        if i % 3 == 0:
            prompt[0] |= 1  # stops after 3 tokens
        q = Sequence(prompt, SamplingParams(max_new_tokens=rng.randint(1, 9)), max_total_tokens=len(prompt) + 9)
        arrivals.setdefault(0 if i < n // 2 else rng.randrange(1, 20), []).append(q)
    return arrivals


def outputs(arrivals: dict[int, list[Sequence]]) -> list[tuple[list[int], FinishReason | None]]:
    return [(q.output_token_ids, q.finish_reason) for step in sorted(arrivals) for q in arrivals[step]]


def test_lag_gives_the_same_tokens_and_frees_every_block():
    for seed in range(6):
        for cfg in ({}, {"num_blocks": 9, "budget": 6}, {"num_blocks": 12, "max_bs": 3, "prefix": True}):
            plain, lagged = workload(seed), workload(seed)
            s0, s1 = make(**cfg), make(**cfg)
            drive(s0, plain, lag=False)
            drive(s1, lagged, lag=True)
            assert outputs(plain) == outputs(lagged), (seed, cfg)
            for s in (s0, s1):
                assert not s.has_work and s.block_manager.num_free_blocks == s.block_manager.num_blocks
                s.block_manager.check([])


def test_tiny_cache_preempts_sequences_with_a_pending_token():
    total = {"dropped": 0, "preempted_pending": 0}
    for seed in range(6):
        plain, lagged = workload(seed), workload(seed)
        drive(make(num_blocks=6, budget=8), plain, lag=False)
        stats = drive(s := make(num_blocks=6, budget=8), lagged, lag=True)
        assert outputs(plain) == outputs(lagged), seed
        assert s.block_manager.num_free_blocks == 6
        for k in total:
            total[k] += stats[k]
    assert total["preempted_pending"] > 0  # its token arrives while it waits, then it is recomputed
    assert total["dropped"] > 0  # stopped at step n, already in step n+1


def test_pending_token_is_decoded_and_length_limit_stops_scheduling():
    s = make()
    a = Sequence([1, 2, 3], SamplingParams(max_new_tokens=2), max_total_tokens=5)
    s.add(a)
    first = s.schedule()
    s.on_launched(first)
    assert a.num_pending_tokens == 1 and a.num_computed_tokens == 3
    second = s.schedule()  # decodes the pending token before it is known
    assert [(it.seq, it.num_new_tokens, it.samples) for it in second.scheduled] == [(a, 1, True)]
    s.on_launched(second)
    assert a.num_pending_tokens == 2 and a.pending_reach_length
    assert s.schedule().is_empty  # its second pending token is its last: no third step
    s.update(first, {a.seq_id: 7})
    s.update(second, {a.seq_id: 8})
    assert a.output_token_ids == [7, 8] and a.num_pending_tokens == 0


def test_finished_while_next_step_runs_drops_that_token_and_frees_blocks():
    s = make()
    a = Sequence([1, 2, 3, 4, 5], SamplingParams(max_new_tokens=8), max_total_tokens=13)
    s.add(a)
    first = s.schedule()
    s.on_launched(first)
    second = s.schedule()
    s.on_launched(second)
    s.update(first, {a.seq_id: STOP})
    s.finish(a, FinishReason.STOP)
    assert s.block_manager.num_free_blocks == 16 and a.num_pending_tokens == 0
    s.update(second, {a.seq_id: 42})
    assert a.output_token_ids == [STOP]
    s.block_manager.check([])


def test_alone_with_pending_token_waits_for_it_before_finishing():
    s = make(num_blocks=2, block_size=4)  # 8 tokens at most
    a = Sequence(list(range(1, 9)), SamplingParams(max_new_tokens=8), max_total_tokens=16)
    s.add(a)
    first = s.schedule()
    s.on_launched(first)
    out = s.schedule()  # its pending token needs a third block: it waits for the token instead of ending now
    assert out.is_empty and not out.finished and not a.is_finished
    s.update(first, {a.seq_id: 5})
    out = s.schedule()
    assert a.is_finished and a.finish_reason == FinishReason.LENGTH and out.finished == [a]
    assert a.output_token_ids == [5]  # as without the lag: no token lost
    assert s.block_manager.num_free_blocks == 2
