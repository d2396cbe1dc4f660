"""Tool-call parsers: pull function calls out of a reply's text (OpenAI `tool_calls`).

Formats:
- `intern-s1` (aliases `internlm`, `interns1`): `<|action_start|><|plugin|>` JSON `<|action_end|>`; whitespace
  may separate the two opening tokens (decoding with spaces_between_special_tokens gives
  `<|action_start|> <|plugin|>`). The engine stops on `<|action_end|>`, so it is usually absent. The code
  interpreter form `<|action_start|><|interpreter|>` is not a function call: it stays content.
- `qwen3` (aliases `qwen`, `hermes`, `qwen2.5`): `<tool_call>` JSON `</tool_call>`, possibly several.

Rules, shared exactly by `parse` and the streaming parser:
- a call block is a start marker, whitespace, a JSON object with a string `name` and an object (or JSON text of
  one) in `arguments` or `parameters` (missing: `{}`), then optionally whitespace and the end marker. The JSON must
  end before the next end or start marker; otherwise (or when it is not such an object) the start marker is
  plain text and the block's text stays content — parsing never raises;
- text outside call blocks is content; whitespace right before a call is dropped, and so is a stretch that is
  only whitespace after a call; empty content is None.

Streaming emits content up to a possible start marker and one `ToolCallDelta` per call, carrying index, id, name
and the whole arguments text, as soon as the call's JSON object is complete (clients accept name and arguments in
one delta; emitting the name earlier could not be taken back if the JSON then turned out invalid).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

_ID_ALPHABET = string.ascii_letters + string.digits
_WS = " \t\r\n"  # what may separate the two tokens of a start marker
_DECODER = json.JSONDecoder()


def new_call_id() -> str:
    """An OpenAI-style tool call id: `call_` and 24 random alphanumerics."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(slots=True, frozen=True)
class ParsedToolCall:
    name: str  # function name
    arguments: str  # JSON text of the arguments object (json.dumps, ensure_ascii=False)
    id: str  # "call_" + 24 alphanumerics unless an id factory says otherwise


@dataclass(slots=True)
class ToolCallResult:
    content: str | None  # text outside the calls, None when empty
    calls: list[ParsedToolCall]  # in order of appearance; empty when no (valid) call


@dataclass(slots=True)
class ToolCallDelta:
    index: int  # position of the call in this reply's tool_calls (0, 1, ...)
    id: str | None  # set on the first delta of a call
    name: str | None  # set on the first delta of a call
    arguments: str  # piece of the arguments JSON text


@dataclass(slots=True)
class ToolStreamDelta:
    content: str = ""  # new content text
    calls: list[ToolCallDelta] = field(default_factory=list)  # new call pieces


def _call_fields(obj: Any) -> tuple[str, str] | None:
    """(name, arguments JSON) of a decoded call object, or None when it is not a call."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    if args is None:
        args = {}
    elif isinstance(args, str):  # some models send the arguments as JSON text
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return name, json.dumps(args, ensure_ascii=False)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


class ToolParser:
    """A call format (subclasses set the markers); `parse` for whole texts, `stream` for a streamed reply."""

    names: ClassVar[tuple[str, ...]]
    start_re: ClassVar[re.Pattern[str]]  # a complete start marker
    end_marker: ClassVar[str]

    def __init__(self, id_factory: Callable[[], str] = new_call_id) -> None:
        self.id_factory = id_factory

    @classmethod
    def is_partial_start(cls, tail: str) -> bool:
        """Whether `tail` (starting at a `<`) may still grow into a start marker."""
        raise NotImplementedError

    def stream(self) -> ToolCallStreamParser:
        return ToolCallStreamParser(self)

    def region_end(self, text: str, start: int) -> int:
        """Where the JSON of a block starting at `start` must end by: the next end or start marker, or the end."""
        end = text.find(self.end_marker, start)
        m = self.start_re.search(text, start)
        candidates = [p for p in (end, m.start() if m else -1) if p >= 0]
        return min(candidates, default=len(text))

    def decode_block(self, text: str, start: int) -> tuple[tuple[str, str], int] | None:
        """((name, arguments), index after the JSON) for a block whose body starts at `start`, or None."""
        i = _skip_ws(text, start)
        if i >= len(text) or text[i] != "{":
            return None
        try:
            obj, j = _DECODER.raw_decode(text[: self.region_end(text, start)], i)
        except ValueError:
            return None
        fields = _call_fields(obj)
        return (fields, j) if fields else None

    def parse(self, text: str) -> ToolCallResult:
        content: list[str] = []
        calls: list[ParsedToolCall] = []
        seg_start = search_from = 0
        while m := self.start_re.search(text, search_from):
            block = self.decode_block(text, m.end())
            if block is None:  # not a call: the marker is plain text
                search_from = m.end()
                continue
            (name, arguments), end = block
            content.append(text[seg_start : m.start()].rstrip())
            calls.append(ParsedToolCall(name, arguments, self.id_factory()))
            k = _skip_ws(text, end)
            if text.startswith(self.end_marker, k):
                end = k + len(self.end_marker)
            seg_start = search_from = end
        tail = text[seg_start:]
        if calls and tail.isspace():
            tail = ""
        content.append(tail)
        return ToolCallResult("".join(content) or None, calls)


class InternS1ToolParser(ToolParser):
    names = ("intern-s1", "interns1", "internlm", "internlm2")
    start_re = re.compile(r"<\|action_start\|>[ \t\r\n]*<\|plugin\|>")
    end_marker = "<|action_end|>"
    _ACTION, _PLUGIN = "<|action_start|>", "<|plugin|>"

    @classmethod
    def is_partial_start(cls, tail: str) -> bool:
        if cls._ACTION.startswith(tail):
            return True
        if not tail.startswith(cls._ACTION):
            return False
        return cls._PLUGIN.startswith(tail[len(cls._ACTION) :].lstrip(_WS))


class Qwen3ToolParser(ToolParser):
    names = ("qwen3", "qwen", "hermes", "qwen2.5", "qwen2-5", "qwen2d5")
    start_re = re.compile(re.escape("<tool_call>"))
    end_marker = "</tool_call>"

    @classmethod
    def is_partial_start(cls, tail: str) -> bool:
        return "<tool_call>".startswith(tail)


# stream states
_OUTSIDE = 0  # content, watching for a start marker
_BLOCK = 1  # after a start marker, waiting for the JSON object to complete
_AFTER_CALL = 2  # after a call's JSON, watching for the optional end marker


class ToolCallStreamParser:
    """Incremental `ToolParser.parse`: `feed` each content delta, then call `finish` once."""

    def __init__(self, parser: ToolParser) -> None:
        self._parser = parser
        self._state = _OUTSIDE
        self._buf = ""  # text received but not yet emitted, dropped or decoded
        self._after_call = False  # the current content stretch follows a call
        self._seg_has_text = False  # ... and non-whitespace of it was emitted
        self._marker = ""  # the start marker of the open block, and the whitespace held before it:
        self._held_ws = ""  # both become content again if the block is not a call
        self._scanned = 0  # length of the block text already known to hold no complete JSON object
        self.num_calls = 0  # calls emitted so far

    def feed(self, delta_text: str) -> ToolStreamDelta:
        self._buf += delta_text
        return self._run(final=False)

    def finish(self) -> ToolStreamDelta:
        """Flush what was held back (an unfinished or invalid block becomes content); the stream is over."""
        return self._run(final=True)

    def _run(self, *, final: bool) -> ToolStreamDelta:
        out = ToolStreamDelta()
        while True:
            if self._state == _OUTSIDE:
                if not self._outside(out, final):
                    return out
            elif self._state == _BLOCK:
                if not self._block(out, final):
                    return out
            elif not self._after(final):
                return out

    def _emit_content(self, out: ToolStreamDelta, text: str) -> None:
        if text:
            out.content += text
            self._seg_has_text = self._seg_has_text or not text.isspace()

    def _outside(self, out: ToolStreamDelta, final: bool) -> bool:
        buf, p = self._buf, self._parser
        m = p.start_re.search(buf)
        if m:
            before = buf[: m.start()]
            kept = before.rstrip()
            self._emit_content(out, kept)
            self._held_ws, self._marker = before[len(kept) :], m.group()
            self._buf, self._state, self._scanned = buf[m.end() :], _BLOCK, 0
            return True
        if final:
            if not (self._after_call and not self._seg_has_text and buf.isspace()):
                self._emit_content(out, buf)
            self._buf = ""
            return False
        cut = len(buf)
        lt = buf.rfind("<")
        for j in (buf.rfind("<", 0, lt) if lt > 0 else -1, lt):  # a partial marker has at most two `<`
            if j >= 0 and p.is_partial_start(buf[j:]):
                cut = j
                break
        cut = len(buf[:cut].rstrip())  # whitespace is dropped if a call follows
        self._emit_content(out, buf[:cut])
        self._buf = buf[cut:]
        return False

    def _block(self, out: ToolStreamDelta, final: bool) -> bool:
        buf, p = self._buf, self._parser
        body = buf.lstrip()
        if not body and not final:
            return False
        decoded = None
        ended = p.region_end(buf, 0) < len(buf)  # a marker ends the region: no more text can complete the JSON
        if body.startswith("{"):
            if ended or final or "}" in buf[self._scanned :]:
                decoded = p.decode_block(buf, 0)
                if decoded is None and not (ended or final):
                    self._scanned = len(buf)
                    return False
            else:
                return False
        if decoded is None:  # not a call: marker and held whitespace are content after all
            self._emit_content(out, self._held_ws + self._marker)
            self._state = _OUTSIDE
            return True
        (name, arguments), end = decoded
        out.calls.append(ToolCallDelta(self.num_calls, p.id_factory(), name, arguments))
        self.num_calls += 1
        self._buf, self._state = buf[end:], _AFTER_CALL
        self._after_call, self._seg_has_text = True, False
        return True

    def _after(self, final: bool) -> bool:
        buf, end = self._buf, self._parser.end_marker
        rest = buf.lstrip()
        if rest.startswith(end):
            self._buf = rest[len(end) :]
        elif not final and end.startswith(rest):
            return False  # empty, or a partial end marker
        self._state = _OUTSIDE
        return True


# name (lower case, "_" written "-") -> parser class
TOOL_PARSERS: dict[str, type[ToolParser]] = {
    name: cls for cls in (InternS1ToolParser, Qwen3ToolParser) for name in cls.names
}

_FAMILY_PARSERS = {"internlm": "intern-s1", "intern-s1": "intern-s1", "qwen3": "qwen3"}


def get_tool_parser(name: str) -> type[ToolParser]:
    """The parser class registered as `name` (any case, `_` or `-`); ValueError naming the known ones."""
    key = name.strip().lower().replace("_", "-")
    if key not in TOOL_PARSERS:
        raise ValueError(f"unknown tool call parser {name!r}; known: {', '.join(sorted(TOOL_PARSERS))}")
    return TOOL_PARSERS[key]


def default_parsers_for(family: str) -> tuple[str, str]:
    """(reasoning parser name, tool parser name) for a chat template family (`ChatTemplate.family`)."""
    if family not in _FAMILY_PARSERS:
        raise ValueError(f"unknown template family {family!r}; known: {', '.join(sorted(_FAMILY_PARSERS))}")
    name = _FAMILY_PARSERS[family]
    return name, name
