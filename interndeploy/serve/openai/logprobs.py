"""Engine logprobs (token ids) -> OpenAI's two logprobs formats.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}`.
Completions (legacy): `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`.
A token's text is its own decoding (special tokens spelled out), so a token that is part of a multi-byte
character reads as U+FFFD, as in vLLM.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from ...tokenizer import Tokenizer
from ...worker.model_runner import TokenLogprobs


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -inf; OpenAI clients expect a number


class TokenTexts:
    """Token id -> text, cached (the same ids come back in every top-N list)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._text = lru_cache(maxsize=65536)(
            lambda token_id: tokenizer.decode([token_id], skip_special_tokens=False)
        )

    def __call__(self, token_id: int) -> str:
        return self._text(token_id)

    def chat_entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self(token_id)
        return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}

    def chat_content(self, token_ids: list[int], logprobs: list[TokenLogprobs]) -> list[dict[str, Any]]:
        out = []
        for token_id, lp in zip(token_ids, logprobs, strict=False):
            entry = self.chat_entry(token_id, lp.logprob)
            entry["top_logprobs"] = [self.chat_entry(t, v) for t, v in lp.top]
            out.append(entry)
        return out

    def completion_logprobs(
        self, token_ids: list[int], logprobs: list[TokenLogprobs], text_offset: int
    ) -> dict[str, Any]:
        """The legacy format for these tokens, offsets counted from `text_offset` in the choice's text."""
        tokens, token_lps, tops, offsets = [], [], [], []
        for token_id, lp in zip(token_ids, logprobs, strict=False):
            text = self(token_id)
            tokens.append(text)
            token_lps.append(_finite(lp.logprob))
            tops.append({self(t): _finite(v) for t, v in lp.top})
            offsets.append(text_offset)
            text_offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def extend_completion_logprobs(acc: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if acc is None:
        return {k: list(v) for k, v in part.items()}
    for key, values in part.items():
        acc[key].extend(values)
    return acc
