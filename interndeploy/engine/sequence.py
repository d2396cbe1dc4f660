"""A sequence: one stream of tokens the engine generates, and its KV bookkeeping.

    token_ids = [ prompt ............ | output ...... ] [pending]
                 <- num_prompt_tokens ->
                 <------ num_computed_tokens ---->            (K/V in the cache, or being written by a launched step)
    block_table: cache blocks holding tokens [0, len(block_table) * block_size)

With async scheduling a launched step's sampled token reaches the host one step late: until then it is
counted in `num_pending_tokens` and the next step takes it as input straight from the device.

A request with n > 1 becomes n sequences sharing the prompt.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

from .multimodal import MultimodalInputs
from .sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued; may hold no blocks (fresh or preempted)
    RUNNING = "running"  # holds blocks, scheduled each step
    FINISHED = "finished"  # blocks released


class FinishReason(str, enum.Enum):
    STOP = "stop"  # a stop token or stop string
    LENGTH = "length"  # max_new_tokens or session_len reached
    ABORT = "abort"  # cancelled by the caller


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    token_ids: list[int]  # prompt + output tokens
    params: SamplingParams
    num_prompt_tokens: int = 0  # set from token_ids at creation
    max_total_tokens: int = 0  # session_len: prompt + output never exceed it
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache, or written by a step already launched
    num_pending_tokens: int = 0  # tokens sampled by launched steps, not yet appended to token_ids (one per step)
    num_cached_tokens: int = 0  # of those, tokens found in the prefix cache at admission
    block_table: list[int] = field(default_factory=list)  # cache block ids, in token order
    block_hashes: list[int] = field(default_factory=list)  # hash chain of the full blocks registered so far
    finish_reason: FinishReason | None = None
    arrival_time: float = 0.0  # time.monotonic() at add; FCFS order
    num_preemptions: int = 0
    guide: Any = None  # grammar matcher state when params.grammar is set (created at the first sampling step)
    multimodal: MultimodalInputs | None = None  # the prompt's images/videos (shared by a request's n samples)

    def __post_init__(self) -> None:
        if not self.num_prompt_tokens:
            self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending_tokens - self.num_computed_tokens

    @property
    def pending_reach_length(self) -> bool:
        """Its pending tokens take it to max_new_tokens or max_total_tokens: it ends once they arrive."""
        if not self.num_pending_tokens:
            return False
        total = len(self.token_ids) + self.num_pending_tokens
        at_max_total = 0 < self.max_total_tokens <= total
        return total - self.num_prompt_tokens >= self.params.max_new_tokens or at_max_total

    @property
    def needs_host_tokens(self) -> bool:
        """Sampling its next token reads its previous tokens on the host (grammar, penalties, multi-token
        bad words), so the step producing them must be read back before the next one is built."""
        p = self.params
        return bool(
            p.grammar
            or p.repetition_penalty != 1.0
            or p.presence_penalty != 0.0
            or p.frequency_penalty != 0.0
            or any(len(word) > 1 for word in p.bad_word_ids)
        )

    def block_key(self, start: int, end: int) -> tuple[int, ...]:
        """Tokens [start, end) as the prefix cache hashes them: media placeholders carry their media's hash."""
        if self.multimodal is None:
            return tuple(self.token_ids[start:end])
        return self.multimodal.hash_key(self.token_ids, start, end)

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
