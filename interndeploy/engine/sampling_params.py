"""Per-sequence decoding parameters, resolved from a GenerationConfig.

This is the contract between the front end (which knows strings and the
tokenizer) and the engine (which only knows token ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_p: float = 0.0  # 0.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; HF semantics over prompt + output tokens
    presence_penalty: float = 0.0  # OpenAI semantics over output tokens
    frequency_penalty: float = 0.0  # OpenAI semantics over output tokens
    seed: int | None = None  # per-sequence seed: same seed, same tokens, whatever the batch
    max_new_tokens: int = 512  # output tokens at most
    min_new_tokens: int = 0  # stop tokens are banned before this many output tokens
    ignore_eos: bool = False  # do not stop on stop_token_ids
    stop_token_ids: list[int] = field(default_factory=list)  # eos ids + user stop ids
    bad_word_ids: list[list[int]] = field(default_factory=list)  # token sequences that must never be produced
    logprobs: int | None = None  # top-N logprobs per output token (0 = just the sampled token's)
    grammar: str | None = None  # compiled llguidance grammar constraining the output (response_format)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
