"""Tool-call parsers (intern-s1 and qwen3/hermes): whole texts, and streams that match them under every chunking."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable, Iterator

import pytest

from interndeploy.chat.reasoning import ReasoningStreamParser, parse_reasoning
from interndeploy.chat.tool_calls import (
    TOOL_PARSERS,
    InternS1ToolParser,
    ParsedToolCall,
    Qwen3ToolParser,
    ToolCallResult,
    ToolCallStreamParser,
    ToolParser,
    default_parsers_for,
    get_tool_parser,
    new_call_id,
)

A_S, PLUGIN, A_E = "<|action_start|>", "<|plugin|>", "<|action_end|>"
WEATHER = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}'
WEATHER_ARGS = '{"city": "Paris", "unit": "c"}'


def chunkings(text: str, randoms: int = 20) -> Iterator[list[str]]:
    """Fixed-size chunks, every two-piece split, and seeded random chunkings of `text`."""
    for n in (1, 2, 3, 4, 5, 7):
        yield [text[i : i + n] for i in range(0, len(text), n)]
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    rng = random.Random(len(text))
    for _ in range(randoms):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8)))) if len(text) > 1 else []
        bounds = [0, *cuts, len(text)]
        yield [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def counter_ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def collect(stream: ToolCallStreamParser, chunks: list[str]) -> ToolCallResult:
    """Feed the chunks and assemble the deltas the way an OpenAI client does (by index)."""
    content: list[str] = []
    calls: dict[int, list] = {}
    for d in [*(stream.feed(c) for c in chunks), stream.finish()]:
        content.append(d.content)
        for tc in d.calls:
            if tc.index not in calls:
                assert tc.id and tc.name, "the first delta of a call carries its id and name"
                assert tc.index == len(calls)
                calls[tc.index] = [tc.name, "", tc.id]
            else:
                assert tc.id is None and tc.name is None
            calls[tc.index][1] += tc.arguments
    return ToolCallResult("".join(content) or None, [ParsedToolCall(*c) for c in calls.values()])


def expected(content: str | None, *calls: tuple[str, str]) -> ToolCallResult:
    return ToolCallResult(content, [ParsedToolCall(n, a, f"call_{i}") for i, (n, a) in enumerate(calls)])


INTERN_CASES = [
    (f"I will look it up.{A_S}{PLUGIN}\n{WEATHER}{A_E}", expected("I will look it up.", ("get_weather", WEATHER_ARGS))),
    # the engine stops on <|action_end|>, so it is usually missing
    (f"Thought.\n{A_S}{PLUGIN}\n{WEATHER}\n", expected("Thought.", ("get_weather", WEATHER_ARGS))),
    # decoding with spaces_between_special_tokens
    (f"Thought. {A_S} {PLUGIN}\n{WEATHER} {A_E}", expected("Thought.", ("get_weather", WEATHER_ARGS))),
    (f"{A_S}\n{PLUGIN} {WEATHER}", expected(None, ("get_weather", WEATHER_ARGS))),
    (f'{A_S}{PLUGIN}{{"name": "f", "arguments": {{"x": 1}}}}', expected(None, ("f", '{"x": 1}'))),
    (f'{A_S}{PLUGIN}{{"name": "f"}}', expected(None, ("f", "{}"))),
    (f'{A_S}{PLUGIN}{{"name": "f", "arguments": "{{\\"x\\": [1, 2]}}"}}', expected(None, ("f", '{"x": [1, 2]}'))),
    (
        f'{A_S}{PLUGIN}\n{{"name": "翻译", "parameters": {{"text": "你好，世界 🌍", "to": "en"}}}}\n{A_E}',
        expected(None, ("翻译", '{"text": "你好，世界 🌍", "to": "en"}')),
    ),
    (
        f'Two calls.\n{A_S}{PLUGIN}{{"name": "a", "parameters": {{}}}}{A_E}\n'
        f'{A_S} {PLUGIN}\n{{"name": "b", "parameters": {{"k": "v"}}}}\n{A_E}\n',
        expected("Two calls.", ("a", "{}"), ("b", '{"k": "v"}')),
    ),
    # a second call right after the first one's JSON, without <|action_end|>
    (
        f'{A_S}{PLUGIN}{{"name": "a", "parameters": {{}}}}{A_S}{PLUGIN}{{"name": "b", "parameters": {{}}}}',
        expected(None, ("a", "{}"), ("b", "{}")),
    ),
    (f"Text after.{A_S}{PLUGIN}{WEATHER}{A_E}\nDone.", expected("Text after.\nDone.", ("get_weather", WEATHER_ARGS))),
    # the code interpreter is not a function call
    (f"Compute it.{A_S}{PLUGIN.replace('plugin', 'interpreter')}\nprint(1 + 1){A_E}", None),
    (f"Bad JSON. {A_S}{PLUGIN}\n{{'name': 'f'}}{A_E}", None),
    (f'Truncated. {A_S}{PLUGIN}\n{{"name": "f", "parameters": {{"x": ', None),
    (f'{A_S}{PLUGIN}\n{{"parameters": {{"x": 1}}}}', None),  # no name
    (f'{A_S}{PLUGIN}\n{{"name": "f", "parameters": [1]}}', None),  # arguments not an object
    (f"{A_S}{PLUGIN}\n", None),
    (f"Just {A_S} text", None),
    ("No call at all, a < b and <|action_end|> stays.\n\n", None),
    ("", expected(None)),
    # an invalid block between valid ones stays content, whitespace before it included
    (
        f'{A_S}{PLUGIN}{{"name": "a"}}{A_E}\n{A_S}{PLUGIN}oops{A_E}\n{A_S}{PLUGIN}{{"name": "b"}}',
        expected(f"\n{A_S}{PLUGIN}oops{A_E}", ("a", "{}"), ("b", "{}")),
    ),
]

TC, ETC = "<tool_call>", "</tool_call>"
QWEN_CASES = [
    (
        f'{TC}\n{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}\n{ETC}',
        expected(None, ("get_weather", '{"city": "Paris"}')),
    ),
    (
        f'Let me check.\n\n{TC}\n{{"name": "f", "arguments": {{"q": "東京"}}}}\n{ETC}',
        expected("Let me check.", ("f", '{"q": "東京"}')),
    ),
    (
        f'{TC}\n{{"name": "a", "arguments": {{"n": 1}}}}\n{ETC}\n{TC}\n{{"name": "b", "arguments": {{"n": 2}}}}\n{ETC}',
        expected(None, ("a", '{"n": 1}'), ("b", '{"n": 2}')),
    ),
    (f'{TC}\n{{"name": "a", "arguments": {{}}}}\n', expected(None, ("a", "{}"))),  # final </tool_call> missing
    (
        f'{TC}{{"name": "a", "arguments": {{}}}}\n{TC}{{"name": "b", "parameters": {{"x": null}}}}',
        expected(None, ("a", "{}"), ("b", '{"x": null}')),
    ),
    (
        f'{TC}\n{{"name": "f", "arguments": {{"s": "a \\"quoted\\" }} brace"}}}}\n{ETC}',
        expected(None, ("f", '{"s": "a \\"quoted\\" } brace"}')),
    ),
    (f'Before.{TC}\n{{"name": "f", "arguments": {{bad json}}}}\n{ETC}', None),
    (f'{TC}\n{{"name": "f", "arguments": {{"x": 1}}\n{ETC}', None),  # JSON cut short by the end tag
    (f'{TC}\n{{"name": "f", "arguments": {{"x": 1', None),
    (f"Use the {TC} tag to call.", None),
    ("<tool_cal", None),
    ("plain answer\n", None),
    (
        f'{TC}{{"name": "a", "arguments": {{}}}}{ETC}\n{TC}{{"broken"{ETC}',
        expected(f'\n{TC}{{"broken"{ETC}', ("a", "{}")),
    ),
]


def run_case(cls: type[ToolParser], text: str, want: ToolCallResult | None) -> None:
    if want is None:  # no valid call: the text is content, untouched
        want = ToolCallResult(text or None, [])
    assert cls(counter_ids()).parse(text) == want
    for chunks in chunkings(text):
        assert collect(cls(counter_ids()).stream(), chunks) == want, chunks


@pytest.mark.parametrize(("text", "want"), INTERN_CASES)
def test_intern_s1(text: str, want: ToolCallResult | None) -> None:
    run_case(InternS1ToolParser, text, want)


@pytest.mark.parametrize(("text", "want"), QWEN_CASES)
def test_qwen3(text: str, want: ToolCallResult | None) -> None:
    run_case(Qwen3ToolParser, text, want)


def test_arguments_are_compact_json_of_the_object() -> None:
    (call,) = Qwen3ToolParser().parse(f'{TC}\n{{"name": "f", "arguments": {{"a":   [1,2], "b": "é"}}}}\n{ETC}').calls
    assert call.arguments == '{"a": [1, 2], "b": "é"}'
    assert json.loads(call.arguments) == {"a": [1, 2], "b": "é"}
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call.id)
    assert new_call_id() != new_call_id()


def test_stream_emits_content_early_and_the_call_when_its_json_completes() -> None:
    s = InternS1ToolParser(counter_ids()).stream()
    assert s.feed("Let me check").content == "Let me check"
    assert s.feed(" the weather. <|action_").content == " the weather."  # "." ends it; the rest may be a marker
    assert s.feed("start|> <|plug").content == ""
    d = s.feed('in|>\n{"name": "get_weather", "parameters": {"city"')
    assert (d.content, d.calls) == ("", [])
    d = s.feed(': "Paris"}}')
    assert d.content == ""
    assert [(c.index, c.id, c.name, json.loads(c.arguments)) for c in d.calls] == [
        (0, "call_0", "get_weather", {"city": "Paris"})
    ]
    assert s.num_calls == 1
    d = s.finish()
    assert (d.content, d.calls) == ("", [])


def test_stream_flushes_unfinished_block_as_content() -> None:
    s = Qwen3ToolParser().stream()
    assert s.feed('Hi\n<tool_call>\n{"name": "f", ').content == "Hi"
    assert s.finish().content == '\n<tool_call>\n{"name": "f", '
    assert s.num_calls == 0


@pytest.mark.parametrize("cls", [InternS1ToolParser, Qwen3ToolParser])
def test_random_texts_stream_like_parse(cls: type[ToolParser]) -> None:
    pieces = {
        InternS1ToolParser: [A_S, PLUGIN, A_E, " ", "\n", "<|action_st", '{"name": "f"}', "{", "}", "x", "<"],
        Qwen3ToolParser: [TC, ETC, " ", "\n", "<tool_", '{"name": "f"}', "{", "}", "x", "<", '"'],
    }[cls]
    rng = random.Random(11)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        want = cls(counter_ids()).parse(text)
        for chunks in chunkings(text, randoms=3):
            assert collect(cls(counter_ids()).stream(), chunks) == want, (text, chunks)


@pytest.mark.parametrize("thinking", [True, False])
def test_reasoning_then_tool_call(thinking: bool) -> None:
    """The server runs the reasoning parser first and feeds its content into the tool parser."""
    opening = "" if thinking else "<think>"
    text = f"{opening}\nThe user wants weather.\n</think>\n\nI'll call the tool.{A_S} {PLUGIN}\n{WEATHER}\n"
    r = parse_reasoning(text, thinking=thinking)
    assert r.reasoning == "The user wants weather."
    want = InternS1ToolParser(counter_ids()).parse(r.content or "")
    assert want == expected("I'll call the tool.", ("get_weather", WEATHER_ARGS))
    for chunks in chunkings(text):
        rs, ts = ReasoningStreamParser(thinking), InternS1ToolParser(counter_ids()).stream()
        reasoning, content, calls = "", "", []
        for chunk in chunks:
            d = rs.feed(chunk)
            reasoning += d.reasoning
            t = ts.feed(d.content)
            content, calls = content + t.content, calls + t.calls
        d = rs.finish()
        reasoning += d.reasoning
        for t in (ts.feed(d.content), ts.finish()):
            content, calls = content + t.content, calls + t.calls
        assert reasoning == r.reasoning
        assert content == want.content
        assert [(c.index, c.id, c.name, c.arguments) for c in calls] == [(0, "call_0", "get_weather", WEATHER_ARGS)]


def test_registry_and_family_defaults() -> None:
    for name in ("intern-s1", "internlm", "interns1", "InternLM", "intern_s1"):
        assert get_tool_parser(name) is InternS1ToolParser
    for name in ("qwen3", "qwen", "hermes", "qwen2_5"):
        assert get_tool_parser(name) is Qwen3ToolParser
    assert {"intern-s1", "internlm", "qwen3", "hermes"} <= set(TOOL_PARSERS)
    with pytest.raises(ValueError, match="known: .*hermes.*intern-s1"):
        get_tool_parser("mistral")
    assert default_parsers_for("internlm") == ("intern-s1", "intern-s1")
    assert default_parsers_for("intern-s1") == ("intern-s1", "intern-s1")
    assert default_parsers_for("qwen3") == ("qwen3", "qwen3")
    with pytest.raises(ValueError):
        default_parsers_for("llama")
