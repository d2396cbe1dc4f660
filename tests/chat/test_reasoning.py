"""Reasoning parser: `<think>…</think>` splitting, and streaming that matches it under every chunking."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from interndeploy.chat.reasoning import (
    REASONING_PARSERS,
    ReasoningResult,
    ReasoningStreamParser,
    ThinkReasoningParser,
    get_reasoning_parser,
    parse_reasoning,
)


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


def stream(chunks: list[str], thinking: bool) -> ReasoningResult:
    parser = ReasoningStreamParser(thinking)
    reasoning, content = [], []
    for chunk in chunks:
        d = parser.feed(chunk)
        reasoning.append(d.reasoning)
        content.append(d.content)
    d = parser.finish()
    reasoning.append(d.reasoning)
    content.append(d.content)
    return ReasoningResult("".join(reasoning) or None, "".join(content) or None)


CASES = [
    # (text, thinking, reasoning, content)
    ("<think>\nR\n</think>\n\nA", True, "R", "A"),
    ("<think>\nR\n</think>\n\nA", False, "R", "A"),  # the model opened the thought itself
    ("\nR\n</think>\n\nA", True, "R", "A"),  # the prompt ended with <think>
    ("R</think>A", True, "R", "A"),
    ("\nstep 1\n\nstep 2\n\n</think>\n\nThe answer is 4.\n", True, "step 1\n\nstep 2\n", "The answer is 4.\n"),
    ("<think>\n\n</think>\n\nA", True, None, "A"),
    ("<think></think>A", False, None, "A"),
    ("<think>\n</think>", True, None, None),
    ("\nstill thinking\n", True, "still thinking", None),  # truncated thought
    ("\nstill thinking about </thin", True, "still thinking about </thin", None),
    ("<think>\nopened by the model", False, "opened by the model", None),
    ("Hello!\n", False, None, "Hello!\n"),
    ("No thought </think> here", False, None, "No thought </think> here"),
    ("<thinking>x", False, None, "<thinking>x"),
    ("<thinking>x", True, "<thinking>x", None),
    ("<thi", False, None, "<thi"),
    ("", False, None, None),
    ("", True, None, None),
    ("\n", True, None, None),
    ("\n\n", True, None, None),
    ("\n\n\n", True, "\n", None),
    ("R\n\n</think>\n\n\n", True, "R\n", None),
    ("R</think>A <think>B</think>C", True, "R", "A <think>B</think>C"),
    ("R\n</think>\n\n 中文 answer\n\nmore", True, "R", " 中文 answer\n\nmore"),
    ("\n推理\n</think>\n\n答案", True, "推理", "答案"),
    ("a<b</c</thin\n</think\n</think>\nx", True, "a<b</c</thin\n</think", "x"),
]


@pytest.mark.parametrize(("text", "thinking", "reasoning", "content"), CASES)
def test_parse(text: str, thinking: bool, reasoning: str | None, content: str | None) -> None:
    assert parse_reasoning(text, thinking=thinking) == ReasoningResult(reasoning, content)
    assert ThinkReasoningParser().parse(text, thinking=thinking) == ReasoningResult(reasoning, content)


@pytest.mark.parametrize(("text", "thinking", "reasoning", "content"), CASES)
def test_stream_matches_parse_for_every_chunking(
    text: str, thinking: bool, reasoning: str | None, content: str | None
) -> None:
    for chunks in chunkings(text):
        assert stream(chunks, thinking) == ReasoningResult(reasoning, content), chunks


def test_stream_emits_early_and_holds_back_only_what_is_ambiguous() -> None:
    p = ReasoningStreamParser(thinking=True)
    assert p.feed("\nLet me").reasoning == "Let me"
    assert p.feed(" think.\n").reasoning == " think."  # the newline may precede </think>
    assert p.feed("More</th").reasoning == "\nMore"
    assert p.in_reasoning
    d = p.feed("ink>\n\n")
    assert (d.reasoning, d.content) == ("", "")
    assert not p.in_reasoning
    assert p.feed("Answer").content == "Answer"
    assert p.finish().content == ""


def test_stream_without_thinking_passes_content_through() -> None:
    p = ReasoningStreamParser(thinking=False)
    assert p.feed("<").content == ""  # may still be <think>
    assert p.feed("b>bold").content == "<b>bold"
    assert p.feed("\n").content == "\n"


@pytest.mark.parametrize("thinking", [True, False])
def test_stream_deltas_are_random_text_safe(thinking: bool) -> None:
    rng = random.Random(7)
    alphabet = ["<think>", "</think>", "\n", "<", "/", "think", ">", "a", " ", "</th", "ink>"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        expected = parse_reasoning(text, thinking=thinking)
        for chunks in chunkings(text, randoms=3):
            assert stream(chunks, thinking) == expected, (text, chunks)


def test_registry() -> None:
    for name in ("intern-s1", "qwen-qwq", "deepseek-r1", "default", "qwen3", "Intern_S1", "QWEN-QWQ"):
        assert get_reasoning_parser(name) is ThinkReasoningParser
    assert {"intern-s1", "qwen-qwq", "deepseek-r1", "default", "qwen3"} <= set(REASONING_PARSERS)
    with pytest.raises(ValueError, match="known: .*deepseek-r1.*intern-s1"):
        get_reasoning_parser("nope")
    parser = get_reasoning_parser("intern-s1")()
    assert isinstance(parser.stream(thinking=True), ReasoningStreamParser)


def test_spaced_decoding_after_think_close():
    """spaces_between_special_tokens=True decodes `</think>` followed by a space: the answer has no leading blank."""
    text = "<think> \nweighing options\n </think> \n\nThe answer."
    whole = parse_reasoning(text, thinking=False)
    assert whole.content == "The answer."
    for size in (1, 2, 3):
        parser = ReasoningStreamParser(thinking=False)
        deltas = [parser.feed(text[i : i + size]) for i in range(0, len(text), size)] + [parser.finish()]
        assert "".join(d.content for d in deltas) == "The answer."
