"""Constrained decoding for `response_format` (JSON object, JSON schema, regex) with llguidance.

    response_format ──compile()──▶ grammar (str, in SamplingParams.grammar; validated up front)
    first sampling step of a sequence ──▶ an LLMatcher kept on the Sequence (seq.guide)
    every step: matcher ──bitmask──▶ disallowed logits = -inf ──▶ sample ──▶ matcher.consume_token

The llguidance tokenizer view is built once per engine, on the first guided request (~1 s).
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import torch

from ..config import ConfigError

if TYPE_CHECKING:
    from ..engine.sequence import Sequence
    from ..tokenizer import Tokenizer


def _schema_of(response_format: dict[str, Any]) -> tuple[str, Any] | None:
    """(kind, spec) for a response_format dict (OpenAI and LMDeploy shapes); None for plain text."""
    if not isinstance(response_format, dict):
        raise ConfigError("response_format must be an object")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json", {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ConfigError("response_format.json_schema must be an object with a 'schema'")
        schema = spec.get("schema", spec.get("json_schema"))
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConfigError(f"response_format.json_schema.schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ConfigError("response_format.json_schema.schema must be a JSON schema object")
        return "json", schema
    if kind == "regex_schema":
        regex = response_format.get("regex_schema")
        if not isinstance(regex, str) or not regex:
            raise ConfigError("response_format.regex_schema must be a non-empty regular expression")
        return "regex", regex
    raise ConfigError(f"response_format.type must be text, json_object, json_schema or regex_schema, got {kind!r}")


class GrammarBackend:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size  # logits width (may exceed the tokenizer's vocabulary)
        self.eos_token_ids = eos_token_ids
        self._lock = threading.Lock()
        self._ll_tokenizer: Any = None

    def _llt(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                if self.tokenizer.hf is None:
                    raise ConfigError("response_format needs a model with a tokenizer.json (fast tokenizer)")
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self.tokenizer.hf, n_vocab=self.vocab_size, eos_token=self.eos_token_ids
                )
            return self._ll_tokenizer

    def compile(self, response_format: dict[str, Any] | None) -> str | None:
        """The grammar for a response_format, or None; ConfigError when it cannot compile."""
        if response_format is None:
            return None
        parsed = _schema_of(response_format)
        if parsed is None:
            return None
        from llguidance import LLMatcher

        kind, spec = parsed
        try:
            if kind == "json":
                grammar = LLMatcher.grammar_from_json_schema(spec, defaults={"whitespace_flexible": False})
            else:
                grammar = LLMatcher.grammar_from_regex(spec)
        except Exception as e:  # llguidance raises ValueError/RuntimeError with the reason
            raise ConfigError(f"response_format cannot be compiled: {e}") from None
        error = LLMatcher.validate_grammar(grammar, self._llt())
        if error:
            raise ConfigError(f"response_format cannot be compiled: {error}")
        return grammar

    def mask_logits(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """Set the logits of tokens the grammar forbids to -inf, for the guided rows only."""
        rows = [i for i, s in enumerate(seqs) if s.params.grammar]
        if not rows:
            return
        import llguidance.torch as llt
        from llguidance import LLMatcher

        mask = llt.allocate_token_bitmask(len(rows), logits.shape[-1])
        for j, i in enumerate(rows):
            seq = seqs[i]
            if seq.guide is None:
                seq.guide = LLMatcher(self._llt(), seq.params.grammar)
                for token in seq.output_token_ids:  # recomputed after preemption: replay
                    seq.guide.consume_token(token)
            llt.fill_next_token_bitmask(seq.guide, mask, j)
        index = torch.tensor(rows, device=logits.device)
        sub = logits.index_select(0, index)
        llt.apply_token_bitmask_inplace(sub, mask.to(logits.device, non_blocking=True))
        logits.index_copy_(0, index, sub)

    @staticmethod
    def accept(seq: Sequence, token: int) -> bool:
        """Advance the sequence's matcher; True when the grammar is complete (the output must end)."""
        if seq.guide is None:
            return False
        seq.guide.consume_token(token)
        return seq.guide.is_stopped()
