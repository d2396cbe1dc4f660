"""A Hypothesis state machine over the scheduler and block manager (no model): requests are added, stepped with
fake sampled tokens, aborted (also while their step runs), preempted when the cache is full, and served from the
prefix cache. After every step the block accounting must be exact, and at the end, with everything aborted or
finished, every block is free again (vLLM's test_kv_cache_manager_fuzz asserts the same)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from interndeploy.engine.block_manager import BlockManager
from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.engine.scheduler import Scheduler
from interndeploy.engine.sequence import FinishReason, Sequence, SequenceStatus

BLOCK_SIZE = 4
STOP = 0  # the fake model's stop token
# prompts start with one of these, so later prompts hit the prefix cache
PREFIXES = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 13, 14, 15, 16], [17, 18, 19, 20, 21, 22, 23, 24])


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sched: Scheduler | None = None
        self.seqs: list[Sequence] = []  # every sequence added, finished ones included
        self.preemptions = 0

    @initialize(num_blocks=st.integers(3, 24), prefix=st.booleans(), max_bs=st.integers(1, 6),
                budget=st.integers(4, 24))
    def setup(self, num_blocks: int, prefix: bool, max_bs: int, budget: int) -> None:
        self.sched = Scheduler(BlockManager(num_blocks, BLOCK_SIZE, prefix), max_bs, budget)

    @property
    def bm(self) -> BlockManager:
        return self.sched.block_manager

    @property
    def live(self) -> list[Sequence]:
        return [s for s in self.seqs if not s.is_finished]

    @rule(which=st.sampled_from(range(len(PREFIXES))), keep=st.integers(0, 12),
          tail=st.lists(st.integers(1, 30), max_size=10), max_new=st.integers(1, 12))
    def add(self, which: int, keep: int, tail: list[int], max_new: int) -> None:
        prompt = PREFIXES[which][:keep] + tail or [25]
        seq = Sequence(prompt, SamplingParams(max_new_tokens=max_new, stop_token_ids=[STOP]),
                       max_total_tokens=len(prompt) + max_new)
        self.seqs.append(seq)
        self.sched.add(seq)

    @rule(tokens=st.lists(st.integers(0, 40), min_size=8, max_size=8), repeat=st.integers(1, 6),
          abort_mid_step=st.integers(-1, 7))
    def steps(self, tokens: list[int], repeat: int, abort_mid_step: int) -> None:
        for k in range(repeat):
            self.step(tokens[k:] + tokens[:k], abort_mid_step if k == 0 else -1)

    def step(self, tokens: list[int], abort_mid_step: int) -> None:
        """One engine step: schedule, (maybe abort one scheduled sequence while the model runs), update, finish
        the sequences that sampled the stop token or reached their length; the invariants hold after each."""
        stalled = not self.sched.running and bool(self.sched.waiting)
        out = self.sched.schedule()
        if stalled:  # something waits and nothing runs: this step must admit it or give up on it
            assert out.scheduled or out.finished, "scheduler made no progress"
        assert len(self.sched.running) <= self.sched.max_batch_size
        assert out.num_prefill_tokens <= self.sched.max_prefill_token_num
        if 0 <= abort_mid_step < len(out.scheduled):
            self.sched.finish(out.scheduled[abort_mid_step].seq, FinishReason.ABORT)
        sampled = {item.seq.seq_id: tokens[i % len(tokens)] for i, item in enumerate(out.scheduled) if item.samples}
        self.sched.update(out, sampled)
        for item in out.scheduled:
            seq = item.seq
            token = sampled.get(seq.seq_id)
            if seq.is_finished or token is None:
                continue
            if token == STOP:
                self.sched.finish(seq, FinishReason.STOP)
            elif seq.num_output_tokens >= seq.params.max_new_tokens or len(seq) >= seq.max_total_tokens:
                self.sched.finish(seq, FinishReason.LENGTH)
        self.preemptions += len(out.preempted)
        self.accounting()

    @precondition(lambda self: self.sched is not None and any(not s.is_finished for s in self.seqs))
    @rule(pick=st.integers(0, 1000))
    def abort(self, pick: int) -> None:
        live = self.live
        self.sched.finish(live[pick % len(live)], FinishReason.ABORT)

    @rule()
    def reset_prefix_cache(self) -> None:
        self.bm.reset_prefix_cache()

    @invariant()
    def accounting(self) -> None:
        if self.sched is None:
            return
        bm, sched = self.bm, self.sched
        holders = [s for s in self.seqs if s.block_table]
        bm.check(holders)  # ref counts == block-table references; free queue == ref-0 blocks; cache consistent
        assert bm.num_free_blocks + bm.num_used_blocks == bm.num_blocks
        assert bm.num_used_blocks == len({b for s in holders for b in s.block_table})
        assert len(set(map(id, sched.running))) == len(sched.running)
        assert not set(map(id, sched.running)) & set(map(id, sched.waiting))
        for seq in sched.waiting:  # fresh or preempted: no blocks
            assert seq.status == SequenceStatus.WAITING and not seq.block_table
        for seq in sched.running:
            assert seq.status == SequenceStatus.RUNNING
            assert seq.num_computed_tokens <= len(seq.block_table) * BLOCK_SIZE
            assert len(seq.block_hashes) <= len(seq.block_table)
        for seq in self.seqs:
            if seq.is_finished:
                assert not seq.block_table and seq.finish_reason is not None
                assert seq not in sched.running and seq not in sched.waiting
            assert len(seq) <= seq.max_total_tokens

    def teardown(self) -> None:
        if self.sched is None:
            return
        for seq in self.live:
            self.sched.finish(seq, FinishReason.ABORT)
        assert not self.sched.has_work
        assert self.bm.num_used_blocks == 0 and self.bm.num_free_blocks == self.bm.num_blocks
        self.bm.check([])


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerMachine = SchedulerMachine.TestCase
