"""What a step gives back, and the step's sampled tokens on their way from the device to the host.

    launch step n:   forward -> sample -> token_ids [S] (device) --non_blocking--> pinned host buffer
                                                                                  + CUDA event recorded
    launch step n+1: its pending input ids are read from step n's device token_ids (no host round trip)
    get() on step n: waits for the event (the only wait on the device in the decode loop), then lists

On the CPU the copy is done by the time `launch` returns and `get()` only converts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class TokenLogprobs:
    logprob: float  # log-probability of the sampled token
    top: list[tuple[int, float]]  # (token id, logprob) of the top-N tokens, best first


@dataclass(slots=True)
class ModelRunnerOutput:
    sampled: dict[int, int] = field(default_factory=dict)  # seq_id -> sampled token id
    logprobs: dict[int, TokenLogprobs] = field(default_factory=dict)  # seq_id -> logprobs, when asked


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    """Start copying `t` to the host without waiting for it (pinned memory on CUDA)."""
    if t is None or t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


@dataclass(slots=True)
class AsyncStepOutput:
    """A launched step's sampled tokens (row i belongs to seq_ids[i]); `get()` waits for them."""

    seq_ids: list[int]  # [S] the sequences that sampled, in row order
    num_logprobs: list[int | None]  # [S] top-N logprobs each row asked for (None = no logprobs)
    token_ids: torch.Tensor | None = None  # [S] i64 on the host (filled once `event` completes)
    logprobs: torch.Tensor | None = None  # [S] f32, raw logprob of the sampled token
    top_ids: torch.Tensor | None = None  # [S, K] i64
    top_logprobs: torch.Tensor | None = None  # [S, K] f32
    event: torch.cuda.Event | None = None  # recorded after the copies; None on the CPU
    ready: ModelRunnerOutput | None = None  # the output itself, when already on the host

    @classmethod
    def start(
        cls,
        seq_ids: list[int],
        num_logprobs: list[int | None],
        token_ids: torch.Tensor,
        logprobs: torch.Tensor | None = None,
        top_ids: torch.Tensor | None = None,
        top_logprobs: torch.Tensor | None = None,
    ) -> AsyncStepOutput:
        """Queue the device-to-host copies of a step's sampler output behind the step's work."""
        out = cls(seq_ids, num_logprobs, _to_host(token_ids), _to_host(logprobs), _to_host(top_ids),
                  _to_host(top_logprobs))  # fmt: skip
        if token_ids.device.type == "cuda":
            out.event = torch.cuda.Event()
            out.event.record()
        return out

    @classmethod
    def done(cls, output: ModelRunnerOutput) -> AsyncStepOutput:
        return cls([], [], ready=output)

    def get(self) -> ModelRunnerOutput:
        """The step's tokens (and logprobs) by seq_id; blocks until the device has produced them."""
        if self.ready is not None:
            return self.ready
        if self.event is not None:
            self.event.synchronize()
        out = ModelRunnerOutput()
        if self.token_ids is not None:
            out.sampled = dict(zip(self.seq_ids, self.token_ids.tolist(), strict=True))
        if self.logprobs is not None:
            chosen = self.logprobs.tolist()
            top_ids = self.top_ids.tolist() if self.top_ids is not None else None
            top_lps = self.top_logprobs.tolist() if self.top_logprobs is not None else None
            for row, (seq_id, n) in enumerate(zip(self.seq_ids, self.num_logprobs, strict=True)):
                if n is None:
                    continue
                top = list(zip(top_ids[row][:n], top_lps[row][:n], strict=True)) if top_ids and n else []
                out.logprobs[seq_id] = TokenLogprobs(chosen[row], top)
        self.ready = out
        return out
