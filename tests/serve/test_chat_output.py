"""Chat reply assembly on scripted engine outputs: parser choice, whole-reply parsing, streamed chunk sequences
(every chunking gives the whole-reply result), OpenAI tool-call deltas, finish reasons, usage and n > 1."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from interndeploy.chat.reasoning import ThinkReasoningParser
from interndeploy.chat.tool_calls import InternS1ToolParser, Qwen3ToolParser
from interndeploy.engine.request import RequestOutput
from interndeploy.serve.openai.chat import ChatResponder
from interndeploy.serve.openai.chat_output import ChoiceStream, OutputPlan, parse_reply

SPECIALS = ["<|im_end|>", "<|im_start|>", "<|action_start|>", "<|action_end|>", "<|plugin|>", "<s>", "</s>"]
CALL = '{"name": "get_current_temperature", "parameters": {"location": "San Francisco, CA, USA"}}'
CALL2 = '{"name": "get_temperature_date", "arguments": {"location": "SF", "date": "2024-11-15"}}'


def plan(family: str = "intern-s1", *, thinking: bool = False, tools: bool = True, **kwargs) -> OutputPlan:
    return OutputPlan.choose(family=family, thinking=thinking, has_tools=tools,
                             reasoning_parser=kwargs.get("reasoning"), tool_call_parser=kwargs.get("tool"),
                             skip_special_tokens=True, special_tokens=SPECIALS)


def test_parsers_follow_flags_then_template_family():
    p = plan("internlm", thinking=False, tools=True)
    assert p.reasoning is None and isinstance(p.tools, InternS1ToolParser) and p.decode_special_tokens
    p = plan("intern-s1", thinking=True, tools=False)
    assert isinstance(p.reasoning, ThinkReasoningParser) and p.tools is None and not p.decode_special_tokens
    assert p.strip is None
    p = plan("qwen3", thinking=True, tools=True)
    assert isinstance(p.tools, Qwen3ToolParser) and not p.decode_special_tokens
    p = plan("internlm", thinking=False, tools=True, reasoning="deepseek-r1", tool="hermes")
    assert isinstance(p.reasoning, ThinkReasoningParser) and isinstance(p.tools, Qwen3ToolParser)
    assert plan("intern-s1", thinking=False, tools=False).reasoning is None
    keep = OutputPlan.choose(family="internlm", thinking=False, has_tools=True, reasoning_parser=None,
                             tool_call_parser=None, skip_special_tokens=False, special_tokens=SPECIALS)
    assert keep.decode_special_tokens and keep.strip is None  # the client asked to see special tokens


CASES = [
    # (plan kwargs, reply text, reasoning, content, [(name, arguments)])
    ({}, f"I will check.<|action_start|><|plugin|>\n{CALL}\n", None, "I will check.",
     [("get_current_temperature", {"location": "San Francisco, CA, USA"})]),
    ({}, f"Checking.\n<|action_start|> <|plugin|>\n{CALL}<|action_end|><|im_end|>", None, "Checking.",
     [("get_current_temperature", {"location": "San Francisco, CA, USA"})]),
    ({}, f"<|action_start|><|plugin|>{CALL}", None, None,
     [("get_current_temperature", {"location": "San Francisco, CA, USA"})]),
    ({}, "no call here<|im_end|> at all", None, "no call here at all", []),
    ({}, "broken <|action_start|><|plugin|>\n{\"name\": ", None, "broken \n{\"name\": ", []),
    ({"thinking": True}, f"Need the weather.\n</think>\n\nLet me look.<|action_start|><|plugin|>\n{CALL}\n",
     "Need the weather.", "Let me look.", [("get_current_temperature", {"location": "San Francisco, CA, USA"})]),
    ({"thinking": True, "tools": False}, "<think>\nhmm\n</think>\n\nThe answer is 4.", "hmm", "The answer is 4.", []),
    ({"thinking": True, "tools": False}, "still thinking when cut", "still thinking when cut", None, []),
    ({"family": "qwen3", "thinking": True},
     f"plan\n</think>\n\nTwo calls.\n<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL2}\n</tool_call>",
     "plan", "Two calls.", [("get_current_temperature", {"location": "San Francisco, CA, USA"}),
                            ("get_temperature_date", {"location": "SF", "date": "2024-11-15"})]),
]


def _calls(parsed) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in parsed]


@pytest.mark.parametrize(("kwargs", "text", "reasoning", "content", "calls"), CASES)
def test_whole_reply(kwargs: dict, text: str, reasoning: str | None, content: str | None, calls: list):
    reply = parse_reply(plan(**kwargs), text)
    assert (reply.reasoning, reply.content, _calls(reply.calls)) == (reasoning, content, calls)


def _stream(p: OutputPlan, pieces: list[str]):
    s = ChoiceStream(p)
    deltas = [s.feed(x) for x in pieces] + [s.finish()]
    reasoning = "".join(d.reasoning for d in deltas)
    content = "".join(d.content for d in deltas)
    calls = [c for d in deltas for c in d.calls]
    return reasoning, content, calls, s.made_calls


@pytest.mark.parametrize(("kwargs", "text", "reasoning", "content", "calls"), CASES)
@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_streamed_reply_equals_whole(kwargs: dict, text: str, reasoning, content, calls, size: int):
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    got_reasoning, got_content, got_calls, made = _stream(plan(**kwargs), pieces)
    assert got_reasoning == (reasoning or "") and got_content == (content or "")
    assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls
    assert [c.index for c in got_calls] == list(range(len(calls))) and made == bool(calls)
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", c.id) for c in got_calls)


# ---------------------------------------------------------------- responder on scripted outputs


def outputs(pieces_per_sample: list[list[str]], reasons: list[str], prompt: int = 7):
    """RequestOutputs of n samples, interleaved, one token per piece."""

    async def gen():
        longest = max(len(p) for p in pieces_per_sample)
        for k in range(longest):
            for i, pieces in enumerate(pieces_per_sample):
                if k < len(pieces):
                    last = k == len(pieces) - 1
                    yield RequestOutput("r", i, pieces[k], [k], None, prompt, k + 1,
                                        num_cached_tokens=3, finished=last, finish_reason=reasons[i] if last else None)

    return gen()


def run_chunks(responder: ChatResponder, stream) -> list[dict]:
    async def go():
        return [chunk async for chunk in responder.chunks(stream)]

    events = asyncio.run(go())
    assert events[-1] == "data: [DONE]\n\n"
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


def test_streamed_tool_call_deltas():
    text = f"Let me check.<|action_start|> <|plugin|>\n{CALL}\n"
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    chunks = run_chunks(ChatResponder("r", "m", plan(), include_usage=True), outputs([pieces], ["stop"]))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content", "") for d in deltas) == "Let me check."
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    head, args = tool_deltas
    assert head["index"] == 0 and head["type"] == "function" and head["id"].startswith("call_")
    assert head["function"] == {"name": "get_current_temperature", "arguments": ""}
    assert set(args) == {"index", "function"} and json.loads(args["function"]["arguments"]) == {
        "location": "San Francisco, CA, USA"}
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert reasons[-1] == "tool_calls" and reasons.count("tool_calls") == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(pieces)
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


def test_streamed_reasoning_and_n_samples():
    a = ["<think>", "\nfirst ", "thought\n</th", "ink>\n\nanswer A"]
    b = ["thought B", "</think>", "answer B"]
    responder = ChatResponder("r", "m", plan(thinking=True, tools=False), n=2)
    chunks = run_chunks(responder, outputs([a, b], ["stop", "length"]))
    by_index: dict[int, dict[str, str]] = {0: {}, 1: {}}
    finish = {}
    for c in chunks:
        (choice,) = c["choices"]
        for key in ("reasoning_content", "content"):
            by_index[choice["index"]][key] = by_index[choice["index"]].get(key, "") + choice["delta"].get(key, "")
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert by_index == {0: {"reasoning_content": "first thought", "content": "answer A"},
                        1: {"reasoning_content": "thought B", "content": "answer B"}}
    assert finish == {0: "stop", 1: "length"}
    assert all("usage" not in c for c in chunks)  # include_usage not asked


def test_collect_matches_stream_and_counts_usage():
    text = f"plan\n</think>\nTwo calls.\n<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL2}\n</tool_call>"
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    p = plan("qwen3", thinking=True)
    responder = ChatResponder("chatcmpl-x", "m", p, n=2)
    response = asyncio.run(responder.collect(outputs([pieces, ["plain"]], ["stop", "stop"])))
    first, second = response["choices"]
    assert first["message"]["reasoning_content"] == "plan" and first["message"]["content"] == "Two calls."
    assert [c["function"]["name"] for c in first["message"]["tool_calls"]] == [
        "get_current_temperature", "get_temperature_date"]
    assert first["finish_reason"] == "tool_calls" and first["logprobs"] is None
    assert second["message"] == {"role": "assistant", "content": None, "reasoning_content": "plain"}
    assert second["finish_reason"] == "stop"
    assert response["usage"] == {"prompt_tokens": 7, "completion_tokens": len(pieces) + 1,
                                 "total_tokens": 7 + len(pieces) + 1, "prompt_tokens_details": {"cached_tokens": 3}}
    assert response["object"] == "chat.completion" and response["id"] == "chatcmpl-x"


def test_length_cut_inside_a_call_is_content_not_a_call():
    text = f"Wait.<|action_start|><|plugin|>\n{CALL[:30]}"
    response = asyncio.run(ChatResponder("r", "m", plan()).collect(outputs([[text]], ["length"])))
    message = response["choices"][0]
    assert message["finish_reason"] == "length" and "tool_calls" not in message["message"]
    assert message["message"]["content"] == "Wait.\n" + CALL[:30]  # special tokens stripped
