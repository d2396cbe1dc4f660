"""Request parsing without a server: error params, extra_body, prompt shapes, and the sampling defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from interndeploy.model_dir import ModelInfo
from interndeploy.serve.openai.defaults import intern_s1_variant, server_gen_defaults
from interndeploy.serve.openai.errors import APIError, param_path, validation_error
from interndeploy.serve.openai.protocol import ChatCompletionRequest, CompletionRequest

HI = [{"role": "user", "content": "hi"}]


def param_of(cls: type, body: dict) -> str | None:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(body)
    return validation_error(info.value.errors()).param


def test_params_name_the_field():
    assert param_of(ChatCompletionRequest, {"messages": HI, "stop": 3}) == "stop"
    assert param_of(ChatCompletionRequest, {"messages": [HI[0], {"role": "x"}]}) == "messages[1].role"
    assert param_of(ChatCompletionRequest, {"messages": HI, "tool_choice": "maybe"}) == "tool_choice"
    assert param_of(ChatCompletionRequest, {"messages": HI, "tools": [{"function": {"name": ""}}]}) == (
        "tools[0].function.name")
    assert param_of(CompletionRequest, {"prompt": [1, "a"]}) == "prompt"
    assert param_path(("body", "messages", 0, "content", "list[dict[str,any]]", 2)) == "messages[0].content[2]"


def test_extra_body_sent_literally_counts_as_top_level():
    req = ChatCompletionRequest.model_validate(
        {"messages": HI, "top_k": 5, "extra_body": {"top_k": 9, "enable_thinking": False, "min_p": 0.1}})
    assert (req.top_k, req.enable_thinking, req.min_p) == (5, False, 0.1)


def test_messages_and_prompts_shapes():
    req = ChatCompletionRequest.model_validate({"messages": "hello", "refusal": None})
    assert req.messages[0].role == "user" and req.messages[0].content == "hello"
    echoed = {"role": "assistant", "content": None, "refusal": None, "annotations": [], "audio": None,
              "function_call": None, "tool_calls": [{"id": "c", "type": "function",
                                                     "function": {"name": "f", "arguments": "{}"}}]}
    req = ChatCompletionRequest.model_validate({"messages": [*HI, echoed]})
    assert req.messages[1].model_dump(exclude_none=True)["annotations"] == []
    assert CompletionRequest.model_validate({"prompt": "a"}).prompt == ["a"]
    assert CompletionRequest.model_validate({"prompt": [1, 2]}).prompt == [[1, 2]]
    assert CompletionRequest.model_validate({"prompt": ["a", [3]]}).prompt == ["a", [3]]


def test_cross_field_checks():
    with pytest.raises(APIError) as info:
        ChatCompletionRequest.model_validate({"messages": HI, "top_logprobs": 1}).check()
    assert info.value.param == "top_logprobs"
    req = ChatCompletionRequest.model_validate({"messages": HI, "max_tokens": 5, "max_completion_tokens": 7})
    assert req.max_new_tokens == 7


def info(config: dict, gen: dict | None = None, name: str = "/models/x") -> ModelInfo:
    return ModelInfo(path=name, name=name, config=config, generation_config=gen or {})


def test_intern_s1_variants():
    s1 = {"architectures": ["InternS1ForConditionalGeneration"], "model_type": "interns1",
          "text_config": {"model_type": "qwen3_moe"}}
    mini = {**s1, "text_config": {"model_type": "qwen3"}}
    assert intern_s1_variant(s1, ["/m/snap"]) == "intern-s1"
    assert intern_s1_variant(mini, ["/m/snap"]) == "intern-s1-mini"
    assert intern_s1_variant({"architectures": ["InternS1ProForConditionalGeneration"]}, []) == "intern-s1-pro"
    assert intern_s1_variant({}, ["internlm/Intern-S1-mini"]) == "intern-s1-mini"
    assert intern_s1_variant({}, ["/data/intern_s1_pro/"]) == "intern-s1-pro"
    assert intern_s1_variant({"architectures": ["InternLM2ForCausalLM"]}, ["internlm2_5-7b-chat"]) is None


def test_server_defaults():
    pro = server_gen_defaults(info({}, name="internlm/Intern-S1-Pro"))
    assert (pro.top_p, pro.top_k, pro.min_p, pro.temperature, pro.do_sample) == (0.95, 50, 0.0, 0.8, True)
    s1 = server_gen_defaults(info({}, {"temperature": 0.6, "do_sample": False}), model_name="Intern-S1")
    assert (s1.temperature, s1.top_p, s1.top_k) == (0.6, 1.0, 50)  # generation_config.json wins
    plain = server_gen_defaults(info({"architectures": ["InternLM2ForCausalLM"]}, {"top_p": 0.8}))
    assert (plain.top_p, plain.temperature, plain.do_sample) == (0.8, 0.8, True)
