"""What a chat reply's text becomes: `reasoning_content`, `content` and `tool_calls`, whole or streamed.

    engine text ──reasoning parser──▶ reasoning | rest ──tool parser──▶ content | tool calls
                                                                       └─ special tokens stripped when the
                                                                          request did not ask to see them

Which parsers run (`OutputPlan.choose`): `--reasoning-parser` / `--tool-call-parser` when given; otherwise the
ones matching the chat template's family, the reasoning parser only when thinking is on and the tool parser only
when the request offers tools (as LMDeploy 0.5 did for InternLM2.5). The InternLM/Intern-S1 call markers are
special tokens, so with that tool parser the engine decodes with skip_special_tokens=False and the leftovers
(e.g. a stray `<|im_end|>`) are removed here instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ...chat.reasoning import ReasoningDelta, ThinkReasoningParser, get_reasoning_parser
from ...chat.tool_calls import (
    InternS1ToolParser,
    ParsedToolCall,
    ToolCallDelta,
    ToolParser,
    default_parsers_for,
    get_tool_parser,
)


@dataclass
class OutputPlan:
    reasoning: ThinkReasoningParser | None = None  # splits out <think>…</think>
    thinking: bool = False  # the prompt opened a thought (reasoning starts without a <think> tag)
    tools: ToolParser | None = None  # pulls out tool calls
    strip: re.Pattern[str] | None = None  # special tokens to remove from what the client sees
    strip_prefixes: frozenset[str] = frozenset()  # proper prefixes of those tokens (held back while streaming)

    @property
    def decode_special_tokens(self) -> bool:
        """Whether the engine must keep special tokens in the text (the tool markers are special tokens)."""
        return isinstance(self.tools, InternS1ToolParser)

    @classmethod
    def choose(
        cls,
        *,
        family: str,
        thinking: bool,
        has_tools: bool,
        reasoning_parser: str | None,
        tool_call_parser: str | None,
        skip_special_tokens: bool,
        special_tokens: Iterable[str] = (),
    ) -> OutputPlan:
        default_reasoning, default_tools = default_parsers_for(family)
        plan = cls(thinking=thinking)
        name = reasoning_parser or (default_reasoning if thinking else None)
        if name:
            plan.reasoning = get_reasoning_parser(name)()
        if has_tools:
            plan.tools = get_tool_parser(tool_call_parser or default_tools)()
        if plan.decode_special_tokens and skip_special_tokens:
            tokens = sorted(set(special_tokens), key=len, reverse=True)
            if tokens:
                plan.strip = re.compile("|".join(map(re.escape, tokens)))
                plan.strip_prefixes = frozenset(t[:k] for t in tokens for k in range(1, len(t)))
        return plan

    def clean(self, text: str | None) -> str | None:
        if text is None or self.strip is None:
            return text
        return self.strip.sub("", text) or None


@dataclass(slots=True)
class ParsedReply:
    reasoning: str | None
    content: str | None
    calls: list[ParsedToolCall]


def parse_reply(plan: OutputPlan, text: str) -> ParsedReply:
    """A whole reply split as the plan says."""
    reasoning, content = None, text
    if plan.reasoning is not None:
        result = plan.reasoning.parse(text, thinking=plan.thinking)
        reasoning, content = result.reasoning, result.content
    calls: list[ParsedToolCall] = []
    if plan.tools is not None and content is not None:
        result = plan.tools.parse(content)
        content, calls = result.content, result.calls
    return ParsedReply(plan.clean(reasoning), plan.clean(content), calls)


def finish_reason(engine_reason: str | None, made_calls: bool) -> str | None:
    return "tool_calls" if made_calls and engine_reason == "stop" else engine_reason


@dataclass(slots=True)
class ChoiceDelta:
    reasoning: str = ""
    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)


class _StreamStripper:
    """`OutputPlan.clean` for a stream: a possible start of a special token is held until it is decided."""

    def __init__(self, plan: OutputPlan) -> None:
        self._plan = plan
        self._longest = max((len(p) for p in plan.strip_prefixes), default=0)
        self._held = ""

    def feed(self, text: str, *, final: bool) -> str:
        if self._plan.strip is None:
            return text
        text = self._plan.strip.sub("", self._held + text)
        hold = 0
        if not final:
            for k in range(min(self._longest, len(text)), 0, -1):
                if text[-k:] in self._plan.strip_prefixes:
                    hold = k
                    break
        self._held = text[len(text) - hold :]
        return text[: len(text) - hold]


class ChoiceStream:
    """`parse_reply` for one streamed choice: `feed` each text delta, `finish` once at the end."""

    def __init__(self, plan: OutputPlan) -> None:
        self._plan = plan
        self._reasoning = plan.reasoning.stream(thinking=plan.thinking) if plan.reasoning else None
        self._tools = plan.tools.stream() if plan.tools else None
        self._clean_reasoning = _StreamStripper(plan)
        self._clean_content = _StreamStripper(plan)
        self.made_calls = False

    def feed(self, text: str) -> ChoiceDelta:
        split = self._reasoning.feed(text) if self._reasoning else ReasoningDelta(content=text)
        return self._tool_pass(split, final=False)

    def finish(self) -> ChoiceDelta:
        split = self._reasoning.finish() if self._reasoning else ReasoningDelta()
        return self._tool_pass(split, final=True)

    def _tool_pass(self, split: ReasoningDelta, *, final: bool) -> ChoiceDelta:
        out = ChoiceDelta(reasoning=split.reasoning)
        if self._tools is None:
            out.content = split.content
        else:
            for part in (self._tools.feed(split.content), self._tools.finish() if final else None):
                if part is not None:
                    out.content += part.content
                    out.calls += part.calls
            self.made_calls = self.made_calls or bool(out.calls)
        out.reasoning = self._clean_reasoning.feed(out.reasoning, final=final)
        out.content = self._clean_content.feed(out.content, final=final)
        return out
