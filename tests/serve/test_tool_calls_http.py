"""Tool calls and reasoning through the real HTTP stack and the `openai` client, on scripted replies (the tiny
random models cannot be made to call tools): the seed scripts' request shapes, the intern-s1 template's prompts,
parser choice without flags, thinking switched both ways, streamed tool-call deltas, several calls."""

from __future__ import annotations

import json

import openai
import pytest

from interndeploy.chat.templates import ChatTemplate
from interndeploy.testing.http_server import ServerThread

from .conftest import MODEL_NAME, ScriptedEngine

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_current_temperature",
        "description": "Get current temperature at a location.",
        "parameters": {"type": "object", "required": ["location"], "properties": {
            "location": {"type": "string", "description": "City, State, Country"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}},
    },
}, {
    "type": "function",
    "function": {
        "name": "get_temperature_date",
        "description": "Get temperature at a location and date.",
        "parameters": {"type": "object", "required": ["location", "date"], "properties": {
            "location": {"type": "string"}, "date": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}},
    },
}]
NOW = '{"name": "get_current_temperature", "parameters": {"location": "San Francisco, CA, USA"}}'
TOMORROW = ('{"name": "get_temperature_date", '
            '"parameters": {"location": "San Francisco, CA, USA", "date": "2024-11-15"}}')
USER = [{"role": "user", "content": "Today is 2024-11-14, What's the temperature in San Francisco now? "
                                    "How about tomorrow?"}]


def client(srv: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(api_key="EMPTY", base_url=srv.url + "/v1", max_retries=0, timeout=60)


def get_current_temperature(location: str, unit: str = "celsius") -> dict:
    return {"temperature": 26.1, "location": location, "unit": unit}


def get_temperature_date(location: str, date: str, unit: str = "celsius") -> dict:
    return {"temperature": 25.9, "location": location, "date": date, "unit": unit}


def test_seed_000_tool_round_trip(scripted_server: ServerThread, scripted_engine: ScriptedEngine):
    """Seed 000's script, unchanged apart from the scripted replies."""
    c = client(scripted_server)
    model_name = c.models.list().data[0].id
    scripted_engine.reply = (f"I need both temperatures.<|action_start|><|plugin|>\n{NOW}\n"
                             f"<|action_start|><|plugin|>\n{TOMORROW}\n")
    messages = list(USER)
    response = c.chat.completions.create(
        model=model_name, messages=messages, max_tokens=32768, temperature=0.8, top_p=0.8, stream=False,
        extra_body=dict(spaces_between_special_tokens=False, enable_thinking=False), tools=TOOLS)
    gen = scripted_engine.last_gen
    assert gen.skip_special_tokens is False and gen.spaces_between_special_tokens is False
    assert gen.temperature == 0.8 and gen.top_p == 0.8 and gen.do_sample
    prompt = scripted_engine.last_prompt
    assert "<|im_start|>system name=<|plugin|>" in prompt and "get_temperature_date" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")  # thinking off: no <think>
    message = response.choices[0].message
    assert message.content == "I need both temperatures." and response.choices[0].finish_reason == "tool_calls"
    messages.append(message)
    functions = {"get_current_temperature": get_current_temperature, "get_temperature_date": get_temperature_date}
    for tool_call in message.tool_calls:
        result = functions[tool_call.function.name](**json.loads(tool_call.function.arguments))
        messages.append({"role": "tool", "name": tool_call.function.name,
                         "content": json.dumps(result, ensure_ascii=False), "tool_call_id": tool_call.id})
    assert [m["content"] for m in messages[2:]] == [
        '{"temperature": 26.1, "location": "San Francisco, CA, USA", "unit": "celsius"}',
        '{"temperature": 25.9, "location": "San Francisco, CA, USA", "date": "2024-11-15", "unit": "celsius"}']
    scripted_engine.reply = "It is 26.1 °C now and 25.9 °C tomorrow."
    response = c.chat.completions.create(
        model=model_name, messages=messages, temperature=0.8, top_p=0.8, stream=False,
        extra_body=dict(spaces_between_special_tokens=False, enable_thinking=False), tools=TOOLS)
    assert response.choices[0].message.content == "It is 26.1 °C now and 25.9 °C tomorrow."
    prompt = scripted_engine.last_prompt
    for name in functions:  # the past calls, re-rendered in the model's format
        assert f'<|action_start|><|plugin|>\n{{"name": "{name}", "parameters": {{"location": ' in prompt
    assert prompt.count("<|im_start|>environment name=<|plugin|>") == 2


def test_seed_004_function_call_script(
    scripted_server: ServerThread, scripted_engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
):
    """Seed 004 section 4.2 (InternLM2.5): no parser flag, tools with "type": "int", an environment message."""
    monkeypatch.setattr(scripted_engine.inner, "chat_template", ChatTemplate.from_builtin("internlm2"))
    tools = [{"type": "function", "function": {
        "name": name, "description": desc, "parameters": {"type": "object", "required": ["a", "b"], "properties": {
            "a": {"type": "int", "description": "A number"}, "b": {"type": "int", "description": "A number"}}}}}
        for name, desc in (("add", "Compute the sum of two numbers"), ("mul", "Calculate the product"))]

    def add(a: int, b: int) -> int:
        return a + b

    def mul(a: int, b: int) -> int:
        return a * b

    c = client(scripted_server)
    model_name = c.models.list().data[0].id
    messages = [{"role": "user", "content": "Compute (3+5)*2"}]
    scripted_engine.reply = 'First add.<|action_start|> <|plugin|>\n{"name": "add", "parameters": {"a": 3, "b": 5}}\n'
    response = c.chat.completions.create(model=model_name, messages=messages, temperature=0.8, top_p=0.8,
                                         stream=False, tools=tools)
    func1_name = response.choices[0].message.tool_calls[0].function.name
    func1_args = response.choices[0].message.tool_calls[0].function.arguments
    func1_out = eval(f"{func1_name}(**{func1_args})", {"add": add, "mul": mul})
    assert func1_out == 8
    messages.append({"role": "assistant", "content": response.choices[0].message.content})
    messages.append({"role": "environment", "content": f"3+5={func1_out}", "name": "plugin"})
    scripted_engine.reply = '<|action_start|><|plugin|>\n{"name": "mul", "parameters": {"a": 8, "b": 2}}'
    response = c.chat.completions.create(model=model_name, messages=messages, temperature=0.8, top_p=0.8,
                                         stream=False, tools=tools)
    assert "<|im_start|>environment name=<|plugin|>\n3+5=8<|im_end|>" in scripted_engine.last_prompt
    func2_name = response.choices[0].message.tool_calls[0].function.name
    func2_args = response.choices[0].message.tool_calls[0].function.arguments
    assert eval(f"{func2_name}(**{func2_args})", {"add": add, "mul": mul}) == 16
    assert response.choices[0].message.content is None


def _accumulate(chunks) -> tuple[str, str, dict[int, dict], list[str | None]]:
    """What a client rebuilds from a stream: content, reasoning, tool calls by index, finish reasons."""
    content, reasoning, calls, reasons = "", "", {}, []
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            for tc in delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = tc.id or call["id"]
                call["name"] += (tc.function.name or "") if tc.function else ""
                call["arguments"] += (tc.function.arguments or "") if tc.function else ""
            reasons.append(choice.finish_reason)
    return content, reasoning, calls, reasons


@pytest.mark.parametrize("spaced", [False, True])
def test_streamed_call_equals_full(scripted_server: ServerThread, scripted_engine: ScriptedEngine, spaced: bool):
    c = client(scripted_server)
    marker = "<|action_start|> <|plugin|>" if spaced else "<|action_start|><|plugin|>"
    scripted_engine.reply = f"Looking it up.<|im_end|>{marker}\n{NOW}\n"
    args = {"model": MODEL_NAME, "messages": USER, "tools": TOOLS,
            "extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}
    full = c.chat.completions.create(**args).choices[0]
    assert full.message.content == "Looking it up." and full.finish_reason == "tool_calls"  # <|im_end|> stripped
    content, reasoning, calls, reasons = _accumulate(c.chat.completions.create(**args, stream=True))
    assert content == full.message.content and reasoning == ""
    (call,) = calls.values()
    assert call["name"] == full.message.tool_calls[0].function.name == "get_current_temperature"
    assert json.loads(call["arguments"]) == json.loads(full.message.tool_calls[0].function.arguments)
    assert call["id"].startswith("call_") and [r for r in reasons if r] == ["tool_calls"]


def test_thinking_on_by_default_and_off_both_ways(scripted_server: ServerThread, scripted_engine: ScriptedEngine):
    c = client(scripted_server)
    scripted_engine.reply = "Let me think about AGI.\n</think>\n\nAGI is general intelligence."
    messages = [{"role": "user", "content": "who are you"}, {"role": "assistant", "content": "I am an AI"},
                {"role": "user", "content": "AGI is?"}]
    on = c.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0.7, top_p=0.8, max_tokens=2048)
    assert scripted_engine.last_prompt.endswith("<|im_start|>assistant\n<think>")
    assert on.choices[0].message.model_extra["reasoning_content"] == "Let me think about AGI."
    assert on.choices[0].message.content == "AGI is general intelligence."
    content, reasoning, _, _ = _accumulate(c.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=2048, stream=True))
    assert (reasoning, content) == ("Let me think about AGI.", "AGI is general intelligence.")

    scripted_engine.reply = "AGI is general intelligence."
    for extra in ({"enable_thinking": False}, {"chat_template_kwargs": {"enable_thinking": False}},
                  {"enable_thinking": True, "chat_template_kwargs": {"enable_thinking": False}}):
        off = c.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=2048, extra_body=extra)
        assert scripted_engine.last_prompt.endswith("<|im_start|>assistant\n"), extra
        assert off.choices[0].message.content == "AGI is general intelligence."
        assert "reasoning_content" not in off.choices[0].message.model_extra  # no parser when thinking is off
    # chat_template_kwargs wins over the top-level flag (LMDeploy's rule)
    c.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=2048,
                              extra_body={"enable_thinking": False, "chat_template_kwargs": {"enable_thinking": True}})
    assert scripted_engine.last_prompt.endswith("<think>")


def test_reasoning_content_sent_back(scripted_server: ServerThread, scripted_engine: ScriptedEngine):
    """An assistant turn after the last user message keeps its reasoning in the Intern-S1 prompt."""
    scripted_engine.reply = "done"
    messages = [*USER, {"role": "assistant", "content": None, "reasoning_content": "I should call it",
                        "tool_calls": [{"id": "call_1", "type": "function",
                                        "function": {"name": "get_current_temperature",
                                                     "arguments": '{"location": "SF"}'}}]},
                {"role": "tool", "content": "26.1", "tool_call_id": "call_1"}]
    client(scripted_server).chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS)
    assert "<think>\nI should call it\n</think>\n<|action_start|><|plugin|>\n" in scripted_engine.last_prompt


def test_tool_choice(scripted_server: ServerThread, scripted_engine: ScriptedEngine):
    c = client(scripted_server)
    scripted_engine.reply = f"<|action_start|><|plugin|>\n{NOW}\n"
    extra = {"enable_thinking": False}
    none = c.chat.completions.create(model=MODEL_NAME, messages=USER, tools=TOOLS, tool_choice="none",
                                     extra_body=extra)
    assert "<|plugin|>" not in scripted_engine.last_prompt.split("<|im_start|>user")[0]
    assert scripted_engine.last_gen.skip_special_tokens is True
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"
    named = {"type": "function", "function": {"name": "get_temperature_date"}}
    c.chat.completions.create(model=MODEL_NAME, messages=USER, tools=TOOLS, tool_choice=named, extra_body=extra)
    system = scripted_engine.last_prompt.split("<|im_start|>user")[0]
    assert "get_temperature_date" in system and "get_current_temperature" not in system
    required = c.chat.completions.create(model=MODEL_NAME, messages=USER, tools=TOOLS, tool_choice="required",
                                         extra_body=extra)
    assert required.choices[0].message.tool_calls[0].function.name == "get_current_temperature"


def test_qwen3_parser_flag_with_several_calls(scripted_qwen3_server: ServerThread, scripted_engine: ScriptedEngine):
    """Intern-S1-Pro's flags (--reasoning-parser deepseek-r1 --tool-call-parser qwen3): several <tool_call> blocks."""
    c = client(scripted_qwen3_server)
    qwen_now = NOW.replace('"parameters"', '"arguments"')
    scripted_engine.reply = (f"two lookups\n</think>\n\nChecking both.\n<tool_call>\n{qwen_now}\n</tool_call>\n"
                             f"<tool_call>\n{TOMORROW}\n</tool_call>")
    full = c.chat.completions.create(model=MODEL_NAME, messages=USER, tools=TOOLS)
    message = full.choices[0].message
    assert scripted_engine.last_gen.skip_special_tokens is True  # <tool_call> is plain text
    assert message.model_extra["reasoning_content"] == "two lookups" and message.content == "Checking both."
    assert [t.function.name for t in message.tool_calls] == ["get_current_temperature", "get_temperature_date"]
    assert len({t.id for t in message.tool_calls}) == 2
    content, reasoning, calls, reasons = _accumulate(c.chat.completions.create(
        model=MODEL_NAME, messages=USER, tools=TOOLS, stream=True))
    assert (reasoning, content) == ("two lookups", "Checking both.")
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_current_temperature", "get_temperature_date"]
    assert json.loads(calls[1]["arguments"]) == {"location": "San Francisco, CA, USA", "date": "2024-11-15"}
    assert [r for r in reasons if r] == ["tool_calls"]
