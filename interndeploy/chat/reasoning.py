"""Reasoning parsers: split a reply into `reasoning_content` (inside `<think>…</think>`) and `content`.

One parser serves every name users pass (`intern-s1`, `qwen-qwq`, `deepseek-r1`, `default`, `qwen3`): all these
models think in `<think>…</think>`. The rules, shared exactly by `parse` and the streaming parser:

- reasoning starts at a leading `<think>` in the output, or at the start of the output when the prompt already
  opened it (`thinking=True`); with `thinking=False` and no leading `<think>` the whole text is content;
- the reasoning ends at the first `</think>`; without one (a truncated thought) everything is reasoning;
- one newline right after `<think>` (or at the start) and one right before `</think>` (or at the end) are not
  part of the reasoning; all newlines right after `</think>` are not part of the content;
- empty parts are None in `ReasoningResult`; text after `</think>` is content, tags in it included.

The streaming parser emits text as soon as it cannot change: it holds back a possible partial tag and a trailing
newline (which is dropped if `</think>` follows), so the joined deltas equal `parse` of the joined text.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(slots=True, frozen=True)
class ReasoningResult:
    reasoning: str | None  # text of the thought, None when there is none (or it is empty)
    content: str | None  # the answer, None when empty


@dataclass(slots=True)
class ReasoningDelta:
    reasoning: str = ""  # new reasoning text ("" when none)
    content: str = ""  # new content text ("" when none)


def _strip_one_newline(text: str) -> str:
    return text.removeprefix("\n").removesuffix("\n")


def parse_reasoning(text: str, *, thinking: bool) -> ReasoningResult:
    """Split a whole reply; `thinking` says whether the prompt opened a thought (it ended with `<think>`)."""
    if text.startswith(THINK_OPEN):
        rest = text[len(THINK_OPEN) :]
    elif thinking:
        rest = text
    else:
        return ReasoningResult(None, text or None)
    end = rest.find(THINK_CLOSE)
    if end < 0:
        reasoning, content = rest, ""
    else:
        after = rest[end + len(THINK_CLOSE) :]
        # decoding with spaces_between_special_tokens puts a space after `</think>`: " \n\nanswer"
        reasoning, content = rest[:end], after.removeprefix(" " if after.startswith(" \n") else "").lstrip("\n")
    return ReasoningResult(_strip_one_newline(reasoning) or None, content or None)


def _held_tail(buf: str) -> int:
    """How many characters at the end of `buf` may still turn into (an optional newline and) `</think>`."""
    hold = 0
    for k in range(min(len(THINK_CLOSE) - 1, len(buf)), 0, -1):
        if THINK_CLOSE.startswith(buf[-k:]):
            hold = k
            break
    if buf[: len(buf) - hold].endswith("\n"):
        hold += 1
    return hold


# stream states
_START = 0  # nothing decided: the text may still begin with <think>
_OPENED = 1  # inside the thought, its first newline not yet seen or dropped
_REASONING = 2  # inside the thought
_AFTER = 3  # right after </think>: dropping newlines
_CONTENT = 4  # the answer: everything passes through


class ReasoningStreamParser:
    """Incremental `parse_reasoning`: `feed` each decoded delta, then call `finish` once."""

    def __init__(self, thinking: bool) -> None:
        self._thinking = thinking
        self._state = _START
        self._buf = ""  # text received but not yet emitted or dropped

    def feed(self, delta_text: str) -> ReasoningDelta:
        self._buf += delta_text
        return self._run(final=False)

    def finish(self) -> ReasoningDelta:
        """Flush what was held back; the stream is over."""
        return self._run(final=True)

    @property
    def in_reasoning(self) -> bool:
        """Whether text fed now would (so far) count as reasoning."""
        return self._state in (_OPENED, _REASONING) or (self._state == _START and self._thinking)

    def _run(self, *, final: bool) -> ReasoningDelta:
        out = ReasoningDelta()
        while True:
            buf = self._buf
            if self._state == _START:
                if buf.startswith(THINK_OPEN):
                    self._buf = buf[len(THINK_OPEN) :]
                    self._state = _OPENED
                elif THINK_OPEN.startswith(buf) and not final:
                    return out
                else:
                    self._state = _OPENED if self._thinking else _CONTENT
            elif self._state == _OPENED:
                if not buf:
                    return out
                if buf[0] == "\n":
                    self._buf = buf[1:]
                self._state = _REASONING
            elif self._state == _REASONING:
                end = buf.find(THINK_CLOSE)
                if end >= 0:
                    out.reasoning += buf[:end].removesuffix("\n")
                    self._buf = buf[end + len(THINK_CLOSE) :]
                    self._state = _AFTER
                    continue
                if final:
                    out.reasoning += buf.removesuffix("\n")
                    self._buf = ""
                    return out
                cut = len(buf) - _held_tail(buf)
                out.reasoning += buf[:cut]
                self._buf = buf[cut:]
                return out
            elif self._state == _AFTER:
                if buf == " " and not final:
                    return out  # a space, then maybe the newlines of a spaced `</think> \n`
                self._buf = buf.removeprefix(" " if buf.startswith(" \n") else "").lstrip("\n")
                if not self._buf:
                    return out
                self._state = _CONTENT
            else:
                out.content += buf
                self._buf = ""
                return out


class ThinkReasoningParser:
    """The `<think>…</think>` parser (stateless; `stream` makes a stateful one per request)."""

    names = ("intern-s1", "interns1", "qwen-qwq", "qwen3", "deepseek-r1", "default")

    def parse(self, text: str, *, thinking: bool) -> ReasoningResult:
        return parse_reasoning(text, thinking=thinking)

    def stream(self, *, thinking: bool) -> ReasoningStreamParser:
        return ReasoningStreamParser(thinking)


# name (lower case, "_" written "-") -> parser class
REASONING_PARSERS: dict[str, type[ThinkReasoningParser]] = {
    name: ThinkReasoningParser for name in ThinkReasoningParser.names
}


def get_reasoning_parser(name: str) -> type[ThinkReasoningParser]:
    """The parser class registered as `name` (any case, `_` or `-`); ValueError naming the known ones."""
    key = name.strip().lower().replace("_", "-")
    if key not in REASONING_PARSERS:
        raise ValueError(f"unknown reasoning parser {name!r}; known: {', '.join(sorted(REASONING_PARSERS))}")
    return REASONING_PARSERS[key]
