"""Incremental detokenization with stop strings.

Sliding window as in vLLM/TGI: ``decode(ids[prefix:])`` minus ``decode(ids[prefix:read])`` is the text the
tokens after ``read`` add, so each step decodes a few tokens instead of the whole output. Both decodes start at
the same token, so a tokenizer's "strip the first piece's leading space" rule cancels out, and segments split at
added tokens join the same way as in a full decode; concatenating every step plus :meth:`flush` gives exactly
``tokenizer.decode(all_ids, skip_special_tokens, spaces_between_special_tokens)``.

The window's start stays put for up to _SHIFT tokens, so a step's ``decode(ids[prefix:])`` is the next step's
``decode(ids[prefix:read])``: one decode per token instead of two, the second only when the window moves on.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"
# A window this long has gone many tokens without visible text (ids the tokenizer does not know, a model
# emitting garbage bytes): it is committed as if final, so each step's decode stays short. Real text closes
# its window within a few tokens (a UTF-8 character is at most 4 byte tokens).
_MAX_WINDOW = 32
_SHIFT = 8  # window length (tokens) from which the window's start moves up to the read offset


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        stop_strings: list[str] | None = None,
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.include_stop_str_in_output = include_stop_str_in_output
        self._stops = [s for s in dict.fromkeys(stop_strings or []) if s]
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._skip = frozenset(tokenizer.all_special_ids) if skip_special_tokens else frozenset()
        # Decoded ids: the output without skipped specials (decode(skip=True) drops them up front too).
        self._ids: list[int] = []
        self._added = tokenizer.added_token_ids
        self._last_added = -1  # index in _ids of the last added token: windows after it decode the fast way
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text: str | None = ""  # decode of ids[prefix_offset:read_offset], None when not known
        # Chars of the current, not yet committed window delta already taken (text before a trailing U+FFFD).
        self._partial = 0
        self._held = ""  # decoded text not emitted yet: could be the start of a stop string
        self._parts: list[str] = []
        self.stopped = False
        self.stop_string: str | None = None

    @property
    def text(self) -> str:
        """All text emitted so far (held-back text excluded)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def step(self, new_token_ids: Iterable[int]) -> str:
        """Append generated tokens; return the text that became safe to show."""
        if self.stopped:
            return ""
        ids, skip, added = self._ids, self._skip, self._added
        before = len(ids)
        for i in new_token_ids:
            if i not in skip:
                if i in added:
                    self._last_added = len(ids)
                ids.append(i)
        if len(ids) == before:
            return ""
        self._held += self._advance(final=False)
        return self._release(final=False)

    def flush(self) -> str:
        """Generation ended for another reason than a stop string: return what was held back, except a dangling
        incomplete UTF-8 character."""
        if self.stopped:
            return ""
        self._held += self._advance(final=True)
        return self._release(final=True)

    # --- internals -------------------------------------------------------------------------------
    def _decode(self, start: int, end: int) -> str:
        ids = self._ids[start:end]
        if start > self._last_added:
            return self.tokenizer.decode_plain(ids)
        return self.tokenizer.decode(
            ids, skip_special_tokens=False, spaces_between_special_tokens=self.spaces_between_special_tokens
        )

    def _advance(self, final: bool) -> str:
        ids, p, r = self._ids, self._prefix_offset, self._read_offset
        if r == len(ids):
            return ""
        final = final or len(ids) - p > _MAX_WINDOW
        prefix_text = self._prefix_text
        if prefix_text is None:
            prefix_text = self._prefix_text = self._decode(p, r)
        new_text = self._decode(p, len(ids))
        delta = new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
        if delta.endswith(_REPLACEMENT) and not final:
            # Incomplete UTF-8 at the end: take what precedes it, keep the window open until it completes.
            safe = delta.rstrip(_REPLACEMENT)
            out = safe[self._partial :]
            self._partial = max(self._partial, len(safe))
            return out
        if final:
            delta = delta.rstrip(_REPLACEMENT)
        elif not delta:
            # Nothing visible yet (e.g. a lone "▁" the decoder strips at a window start): keep the window.
            return ""
        out = delta[self._partial :]
        self._partial = 0
        if len(ids) - p >= _SHIFT or final:
            self._prefix_offset, self._prefix_text = r, None  # decoded on the next step
        else:
            self._prefix_text = new_text  # the window keeps its start: this text is the next step's prefix
        self._read_offset = len(ids)
        return out

    def _release(self, final: bool) -> str:
        held = self._held
        if not self._stops:  # nothing to hold back
            self._held = ""
            if held:
                self._parts.append(held)
            return held
        match = self._find_stop(held)
        if match is not None:
            start, stop = match
            out = held[: start + len(stop)] if self.include_stop_str_in_output else held[:start]
            self._held = ""
            self.stopped = True
            self.stop_string = stop
            self._parts.append(out)
            return out
        keep = 0 if final else self._stop_prefix_len(held)
        out = held[: len(held) - keep]
        self._held = held[len(held) - keep :]
        if out:
            self._parts.append(out)
        return out

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        # The match a token-by-token stream meets first: smallest end, then earliest start.
        best: tuple[int, int, str] | None = None
        for s in self._stops:
            i = text.find(s)
            if i >= 0:
                key = (i + len(s), i, s)
                if best is None or key[:2] < best[:2]:
                    best = key
        return (best[1], best[2]) if best is not None else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that starts some stop string."""
        for k in range(min(self._max_hold, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0
