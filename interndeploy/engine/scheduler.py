"""Continuous batching: which sequences run this step, and how many of their tokens.

Every step mixes decodes (one new token per running sequence) with prefill chunks
(up to `max_prefill_token_num` prompt tokens, spread over as many waiting
sequences as fit). A long prompt is prefilled over several steps (chunked
prefill). When the cache runs out of blocks, the most recently admitted running
sequence is preempted: its blocks are freed and it goes back to the front of the
queue, to be recomputed later (prefix-cache hits make that cheap).

A step's life: `schedule()` picks it; once its inputs are built and launched, `on_launched()` counts
its tokens as computed and its samples as pending; `update()` appends the sampled tokens when they
reach the host. With async scheduling the engine schedules and launches step n+1 before step n's
tokens arrive: a running sequence then decodes its pending token (the model runner reads it on the
device), and one whose pending tokens already reach its length limit is not scheduled again.

Pure Python, no torch: tests drive it with fake model outputs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import FinishReason, Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # tokens computed this step, starting at seq.num_computed_tokens (until on_launched)
    # this step reaches the end of the sequence (pending tokens included), so its last logits give a token
    samples: bool = field(init=False)

    def __post_init__(self) -> None:
        seq = self.seq
        self.samples = seq.num_computed_tokens + self.num_new_tokens == len(seq.token_ids) + seq.num_pending_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)  # in batch order
    num_prefill_tokens: int = 0  # tokens of prefill chunks this step
    num_decode_tokens: int = 0  # one per decoding sequence
    preempted: list[Sequence] = field(default_factory=list)  # sent back to the queue this step
    finished: list[Sequence] = field(default_factory=list)  # ended by the scheduler (cache too small)
    launched: bool = False  # on_launched() ran: the sequences' computed counts include this step

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class Scheduler:
    block_manager: BlockManager
    max_batch_size: int  # sequences per step
    max_prefill_token_num: int  # prefill tokens per step
    waiting: deque[Sequence] = field(default_factory=deque)
    running: list[Sequence] = field(default_factory=list)  # in admission order

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_prefill_token_num
        bm = self.block_manager

        # 1. running sequences first: decodes and unfinished prefill chunks
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            if seq.pending_reach_length:  # ends when its pending token arrives: no step for it
                i += 1
                continue
            num_new = seq.num_uncomputed_tokens
            is_decode = num_new == 1
            if not is_decode:
                num_new = min(num_new, budget)
                if num_new == 0:
                    i += 1
                    continue
            while not bm.allocate_slots(seq, num_new):
                victim = self.running[-1]
                if victim is seq and len(self.running) == 1:
                    if seq.num_pending_tokens:  # decide once its pending token (which the caller gets) is in
                        i += 1
                        seq = None
                        break
                    # alone and still does not fit: the cache cannot hold this sequence
                    self.running.pop()
                    self._finish(seq, FinishReason.LENGTH)
                    out.finished.append(seq)
                    seq = None
                    break
                self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    seq = None
                    break
            if seq is None:
                continue
            out.scheduled.append(ScheduledSeq(seq, num_new))
            if is_decode:
                out.num_decode_tokens += 1
            else:
                out.num_prefill_tokens += num_new
                budget -= num_new
            i += 1

        # 2. admit waiting sequences while blocks, batch slots and prefill budget last
        while self.waiting and not out.preempted and len(self.running) < self.max_batch_size and budget > 0:
            seq = self.waiting[0]
            if seq.num_pending_tokens:  # preempted while its last step ran: readmit once the token is in
                break
            computed = bm.match_prefix(seq)
            num_computed = seq.num_computed_tokens + len(computed) * bm.block_size
            num_new = min(len(seq.token_ids) - num_computed, budget)
            if not bm.allocate_slots(seq, num_new, computed):
                if not self.running and not out.scheduled and bm.num_used_blocks == 0:
                    # nothing else holds blocks: this prompt can never fit
                    self.waiting.popleft()
                    self._finish(seq, FinishReason.LENGTH)
                    out.finished.append(seq)
                    continue
                break
            if seq.num_preemptions == 0:
                bm.record_lookup(seq.num_prompt_tokens, len(computed) * bm.block_size)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, num_new))
            out.num_prefill_tokens += num_new
            budget -= num_new
        return out

    def on_launched(self, out: SchedulerOutput) -> None:
        """The step's inputs are built and launched: count its tokens as computed, its samples as pending."""
        out.launched = True
        for item in out.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            if item.samples:
                item.seq.num_pending_tokens += 1

    def update(self, out: SchedulerOutput, sampled: dict[int, int]) -> None:
        """Take a step's sampled tokens (`sampled`: seq_id -> new token) once they are on the host."""
        if not out.launched:
            self.on_launched(out)
        for item in out.scheduled:
            seq = item.seq
            if seq.is_finished:  # aborted, or stopped by the previous step, while this one ran: token dropped
                continue
            if item.samples:
                seq.num_pending_tokens -= 1
                token = sampled.get(seq.seq_id)
                if token is not None:
                    seq.append_token(token)
            # a preempted sequence holds no blocks; a later launched step may have computed the pending token
            if seq.status == SequenceStatus.RUNNING and seq.num_computed_tokens <= len(seq.token_ids):
                self.block_manager.register_full_blocks(seq)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence (stop, length or abort) and release its blocks."""
        if seq.is_finished:
            return
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._finish(seq, reason)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        # blocks may still be written by a launched step: a step launched later (in stream order) is the
        # first that can reuse them
        self.block_manager.free(seq)
        seq.num_pending_tokens = 0
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
