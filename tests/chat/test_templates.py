"""Chat templates: byte-exact prompts per shared/FORMATS.md, template choice, and parity with transformers."""

from __future__ import annotations

import json

import pytest

from interndeploy.chat import builtin
from interndeploy.chat.templates import (
    ChatTemplate,
    ChatTemplateError,
    load_chat_template_config,
    read_model_chat_template,
)
from interndeploy.config import ChatTemplateConfig

INTERNLM2_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such as "
    "English and 中文."
)
S1_SYSTEM = (
    "You are an expert reasoner with extensive experience in all areas. You approach problems through systematic "
    "thinking and rigorous reasoning. Your response should reflect deep understanding and precise logical "
    "thinking, making your solution path and reasoning clear to others. Please put your thinking process within "
    "<think>...</think> tags."
)
S1_TOOL_INSTRUCTION = """Your response should consist of a reasoning step (**thought**) followed immediately by \
a function call in valid JSON format. Wrap each function call using the `<|action_start|><|plugin|>` and \
`<|action_end|>` tags.

**Format example:**

```
(Your thought goes here...)

<|action_start|><|plugin|>
{
    "name": "tool_name",
    "parameters": {
        "parameter1": "value1",
        "parameter2": "value2"
    }
}
<|action_end|>
```

# External Tools
You have access to these tools:
"""
# the real internlm2_5-7b-chat template
INTERNLM2_5_HF = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Compute the sum of two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "int"}, "b": {"type": "int"}}},
    },
}
ADD_FN_JSON = json.dumps(ADD["function"], ensure_ascii=False)  # Python's json.dumps defaults are the format
CALL = {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 5}'}}


def tpl(name: str, **config) -> ChatTemplate:
    return ChatTemplate.resolve(None, ChatTemplateConfig(model_name=name, **config))


# ------------------------------------------------------------------ internlm2 / internlm3


def test_internlm2_single_turn_default_system():
    out = tpl("internlm2").render("hi", bos_token="<s>")
    assert out == (
        f"<s><|im_start|>system\n{INTERNLM2_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_internlm2_explicit_system_and_multi_turn():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "who are you"},
        {"role": "assistant", "content": "I am an AI"},
        {"role": "user", "content": "AGI is?"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nwho are you<|im_end|>\n"
        "<|im_start|>assistant\nI am an AI<|im_end|>\n<|im_start|>user\nAGI is?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tpl("internlm2").render(msgs) == expected
    assert tpl("internlm3").render(msgs) == expected
    assert tpl("internlm2").render(msgs, add_generation_prompt=False) == expected.removesuffix(
        "<|im_start|>assistant\n"
    )


def test_internlm2_system_override_from_config():
    t = tpl("internlm2_5", meta_instruction="You are a robot.")
    assert t.name == "internlm2"
    assert t.render("hi") == (
        "<|im_start|>system\nYou are a robot.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    # a system message in the request wins over the configured one
    assert t.render([{"role": "system", "content": "X"}, {"role": "user", "content": "hi"}]).startswith(
        "<|im_start|>system\nX<|im_end|>\n<|im_start|>user"
    )


def test_internlm2_tools_call_and_result():
    msgs = [
        {"role": "user", "content": "Compute (3+5)*2"},
        {"role": "assistant", "content": "I will add first.", "tool_calls": [CALL]},
        {"role": "tool", "content": "8", "tool_call_id": "call_0", "name": "add"},
    ]
    out = tpl("internlm2").render(msgs, tools=[ADD])
    assert out == (
        f"<|im_start|>system\n{INTERNLM2_SYSTEM}<|im_end|>\n"
        f"<|im_start|>system name=<|plugin|>\n[{ADD_FN_JSON}]<|im_end|>\n"
        "<|im_start|>user\nCompute (3+5)*2<|im_end|>\n"
        "<|im_start|>assistant\nI will add first.<|action_start|><|plugin|>\n"
        '{"name": "add", "parameters": {"a": 3, "b": 5}}<|action_end|><|im_end|>\n'
        "<|im_start|>environment name=<|plugin|>\n8<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # with a system message, the tools turn follows it; dict arguments render the same
    call = {**CALL, "function": {"name": "add", "arguments": {"a": 3, "b": 5}}}
    out = tpl("internlm2").render(
        [{"role": "system", "content": "S"}, {"role": "assistant", "content": None, "tool_calls": [call]}],
        tools=[ADD],
        add_generation_prompt=False,
    )
    assert out == (
        f"<|im_start|>system\nS<|im_end|>\n<|im_start|>system name=<|plugin|>\n[{ADD_FN_JSON}]<|im_end|>\n"
        '<|im_start|>assistant\n<|action_start|><|plugin|>\n{"name": "add", "parameters": {"a": 3, "b": 5}}'
        "<|action_end|><|im_end|>\n"
    )


def test_seed_004_environment_message():
    msgs = [
        {"role": "user", "content": "Compute (3+5)*2"},
        {"role": "assistant", "content": None},
        {"role": "environment", "content": "3+5=8", "name": "plugin"},
    ]
    out = tpl("internlm2").render(msgs, tools=[ADD])
    assert out.endswith(
        "<|im_start|>user\nCompute (3+5)*2<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
        "<|im_start|>environment name=<|plugin|>\n3+5=8<|im_end|>\n<|im_start|>assistant\n"
    )


def test_openai_client_echoed_message_is_accepted():
    chat = pytest.importorskip("openai.types.chat")
    echoed = chat.ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": "ok",
            "refusal": None,
            "annotations": [],
            "audio": None,
            "function_call": None,
            "tool_calls": [CALL],
        }
    )
    as_dict = {
        "role": "assistant",
        "content": "ok",
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
        "reasoning_content": None,
        "tool_calls": [CALL],
    }
    t = tpl("internlm2")
    expected = t.render(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok", "tool_calls": [CALL]}]
    )
    assert t.render([{"role": "user", "content": "q"}, echoed]) == expected
    assert t.render([{"role": "user", "content": "q"}, as_dict]) == expected


# ------------------------------------------------------------------ intern-s1


def test_intern_s1_thinking_on_and_off():
    t = tpl("intern-s1")
    assert (t.name, t.family, t.thinking_default, t.supports_thinking) == ("intern-s1", "intern-s1", True, True)
    assert t.render("hi") == (
        f"<|im_start|>system\n{S1_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>"
    )
    assert t.render("hi", enable_thinking=True) == t.render("hi")
    off = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert t.render("hi", enable_thinking=False) == off
    assert t.render("hi", **{"enable_thinking": False, "unused_template_kwarg": 1}) == off  # chat_template_kwargs
    sys = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert t.render(sys, enable_thinking=False) == "<|im_start|>system\nS<|im_end|>\n" + off
    assert t.thinking_enabled(None) and not t.thinking_enabled(False)


def test_intern_s1_aliases():
    for name in ("interns1", "Intern-S1-mini", "intern_s1"):
        assert tpl(name).name == "intern-s1"


def test_intern_s1_tools_reasoning_and_results():
    msgs = [
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer", "reasoning_content": "dropped"},
        {"role": "user", "content": "Compute 3+5"},
        {"role": "assistant", "content": "Adding.", "reasoning_content": "need add", "tool_calls": [CALL]},
        {"role": "tool", "content": "8", "tool_call_id": "call_0"},
    ]
    body = (
        "<|im_start|>user\nold question<|im_end|>\n<|im_start|>assistant\nold answer<|im_end|>\n"
        "<|im_start|>user\nCompute 3+5<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nneed add\n</think>\nAdding.<|action_start|><|plugin|>\n"
        '{"name": "add", "parameters": {"a": 3, "b": 5}}\n<|action_end|><|im_end|>\n'
        "<|im_start|>environment name=<|plugin|>\n8<|im_end|>\n"
    )
    tools_json = json.dumps([ADD["function"]], ensure_ascii=False, indent=2)
    t = tpl("intern-s1")
    assert t.render(msgs, tools=[ADD]) == (
        f"<|im_start|>system name=<|plugin|>\n{S1_SYSTEM}\n\n{S1_TOOL_INSTRUCTION}{tools_json}<|im_end|>\n"
        + body
        + "<|im_start|>assistant\n<think>"
    )
    assert t.render(msgs, tools=[ADD], enable_thinking=False) == (
        f"<|im_start|>system name=<|plugin|>\n{S1_TOOL_INSTRUCTION}{tools_json}<|im_end|>\n"
        + body
        + "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "S"}, *msgs]
    assert t.render(with_system, tools=[ADD], enable_thinking=False).startswith(
        f"<|im_start|>system name=<|plugin|>\nS\n\n{S1_TOOL_INSTRUCTION}{tools_json}<|im_end|>\n<|im_start|>user\n"
    )


# ------------------------------------------------------------------ qwen3 / intern-s1-pro


def test_qwen3_tools_parallel_calls_responses_and_thinking_off():
    call2 = {"id": "call_1", "type": "function", "function": {"name": "mul", "arguments": {"a": 8, "b": 2}}}
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Compute"},
        {"role": "assistant", "content": "", "reasoning_content": "plan", "tool_calls": [CALL, call2]},
        {"role": "tool", "content": "8", "tool_call_id": "call_0"},
        {"role": "tool", "content": "16", "tool_call_id": "call_1"},
    ]
    t = tpl("qwen3")
    assert (t.family, t.stop_words, t.thinking_default) == ("qwen3", ["<|im_end|>", "<|endoftext|>"], True)
    assert t.render(msgs, tools=[ADD], enable_thinking=False, bos_token="<s>") == (
        "<|im_start|>system\nS\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(ADD)
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nCompute<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nplan\n</think>\n\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 5}}\n</tool_call>\n'
        '<tool_call>\n{"name": "mul", "arguments": {"a": 8, "b": 2}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n8\n</tool_response>\n<tool_response>\n16\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert t.render("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    nullable = {"type": "function", "function": {"name": "f", "parameters": {"default": None}}}
    assert '{"name": "f", "parameters": {"default": null}}' in t.render("hi", tools=[nullable])


def test_intern_s1_pro_uses_qwen3_format():
    t = tpl("intern-s1-pro")
    assert (t.name, t.family, t.thinking_default) == ("intern-s1-pro", "qwen3", True)
    out = t.render([{"role": "user", "content": "q"}, {"role": "environment", "content": "r", "name": "plugin"}])
    assert out == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ------------------------------------------------------------------ content, roles, errors


def test_content_part_lists():
    parts = [{"type": "text", "text": "tell me"}, {"type": "text", "text": "a story"}]
    assert tpl("qwen3").render([{"role": "user", "content": parts}]) == (
        "<|im_start|>user\ntell me\na story<|im_end|>\n<|im_start|>assistant\n"
    )
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}, {"type": "text", "text": "describe"}]
    with pytest.raises(ChatTemplateError, match="image_url"):
        tpl("internlm2").render([{"role": "user", "content": image}])
    # a model's own template receives media parts untouched and decides
    media_aware = "{% for m in messages %}{% for p in m.content %}[{{ p.type }}]{% endfor %}{% endfor %}"
    assert ChatTemplate.from_jinja(media_aware).render([{"role": "user", "content": image}]) == "[image_url][text]"


def test_unknown_role_and_bad_input():
    with pytest.raises(ChatTemplateError, match="unknown message role 'narrator'"):
        tpl("internlm2").render([{"role": "narrator", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="non-empty"):
        tpl("internlm2").render([])
    assert isinstance(ChatTemplateError("x"), ValueError)
    dev = tpl("internlm2").render([{"role": "developer", "content": "D"}, {"role": "user", "content": "u"}])
    assert dev.startswith("<|im_start|>system\nD<|im_end|>\n")


def test_unknown_template_name():
    with pytest.raises(ChatTemplateError, match="unknown chat template 'llama9'.*internlm2.*qwen3"):
        tpl("llama9")
    with pytest.raises(ChatTemplateError, match="unknown chat template"):
        load_chat_template_config("llama9")


def test_template_errors_become_chat_template_errors():
    t = ChatTemplate.from_jinja("{{ raise_exception('no system allowed') }}")
    with pytest.raises(ChatTemplateError, match="no system allowed"):
        t.render("hi")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate.from_jinja("{% if %}")
    with pytest.raises(ChatTemplateError, match="namespace attribute"):
        ChatTemplate.from_jinja("{% set ns = namespace(_x=1) %}").render("hi")
    # HF's assistant-mask marker and helpers are available
    hf_style = "{% generation %}{{ messages[0].content | tojson }}{% endgeneration %}{{ strftime_now('%Y') | length }}"
    assert ChatTemplate.from_jinja(hf_style).render("<书>") == '"<书>"4'


# ------------------------------------------------------------------ choosing the template


def test_resolve_order():
    model = ChatTemplate.resolve(INTERNLM2_5_HF, None, model_type="internlm2")
    assert (model.name, model.family, model.supports_thinking, model.thinking_default) == (
        "model",
        "internlm",
        False,
        False,
    )
    assert ChatTemplate.resolve(INTERNLM2_5_HF, ChatTemplateConfig(model_name="qwen3")).name == "qwen3"
    assert ChatTemplate.resolve(INTERNLM2_5_HF, ChatTemplateConfig(model_name="hf")).name == "model"
    assert ChatTemplate.resolve(None, None, model_type="qwen3_moe").name == "qwen3"
    assert ChatTemplate.resolve(None, None, model_type="interns1").name == "intern-s1"
    assert ChatTemplate.resolve(None, None, model_type="internlm3").name == "internlm3"
    assert ChatTemplate.resolve(None, None, model_type="llama").name == "internlm2"
    t = ChatTemplate.resolve(None, ChatTemplateConfig(model_name="internlm2", stop_words=["<eoa>", "<|im_end|>"]))
    assert t.stop_words == ["<|im_end|>", "<|action_end|>", "<eoa>"]


def test_model_template_family_and_thinking_probe():
    qwen = ChatTemplate.from_jinja(builtin.QWEN3_TEMPLATE)
    assert (qwen.family, qwen.supports_thinking, qwen.thinking_default) == ("qwen3", True, True)
    assert qwen.stop_words == ["<|im_end|>", "<|endoftext|>"]
    s1 = ChatTemplate.from_jinja(builtin.INTERN_S1_TEMPLATE)
    assert (s1.family, s1.supports_thinking, s1.thinking_default) == ("intern-s1", True, True)
    opt_in = "{{ 'x' }}{% if enable_thinking is defined and enable_thinking %}<think>{% endif %}"
    assert (ChatTemplate.from_jinja(opt_in).supports_thinking, ChatTemplate.from_jinja(opt_in).thinking_default) == (
        True,
        False,
    )
    named = [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "with tools"}]
    t = ChatTemplate.from_jinja(named)
    assert t.render("hi") == "plain" and t.render("hi", tools=[ADD]) == "with tools"


def test_load_chat_template_config(tmp_path):
    assert load_chat_template_config("internlm2_5").model_name == "internlm2_5"
    cfg_file = tmp_path / "tpl.json"
    cfg_file.write_text(json.dumps({"model_name": "internlm2", "meta_instruction": "M", "stop_words": ["<x>"]}))
    cfg = load_chat_template_config(str(cfg_file))
    assert (cfg.model_name, cfg.meta_instruction, cfg.stop_words) == ("internlm2", "M", ["<x>"])
    cfg = load_chat_template_config('{"model_name": "intern-s1", "system": "S"}')
    assert ChatTemplate.resolve(None, cfg).render("hi", enable_thinking=False).startswith("<|im_start|>system\nS<|im")
    jinja_file = tmp_path / "t.jinja"
    jinja_file.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    t = ChatTemplate.resolve(INTERNLM2_5_HF, load_chat_template_config(str(jinja_file)))
    assert (t.name, t.render("abc")) == ("custom", "abc")
    with pytest.raises(ChatTemplateError, match="not found"):
        load_chat_template_config(str(tmp_path / "missing.json"))
    with pytest.raises(ChatTemplateError, match="not valid JSON"):
        load_chat_template_config('{"model_name": ')


def test_lmdeploy_piece_config():
    pieces = {"system": "<|im_start|>system\n", "eosys": "<|im_end|>\n", "user": "<|im_start|>user\n"}
    pieces |= {"eoh": "<|im_end|>\n", "assistant": "<|im_start|>assistant\n", "eoa": "<|im_end|>", "separator": "\n"}
    config = {"model_name": "customized_model", "meta_instruction": "Robot.", "stop_words": ["<|im_end|>"], **pieces}
    cfg = load_chat_template_config(json.dumps(config))
    t = ChatTemplate.resolve(INTERNLM2_5_HF, cfg)
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert t.render(msgs) == (
        "<|im_start|>system\nRobot.<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
        "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (t.name, t.stop_words) == ("customized_model", ["<|im_end|>"])


def test_read_model_chat_template(tmp_path):
    assert read_model_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": INTERNLM2_5_HF}))
    assert read_model_chat_template(tmp_path) == INTERNLM2_5_HF
    (tmp_path / "chat_template.jinja").write_text("J")
    assert read_model_chat_template(tmp_path) == "J"


# ------------------------------------------------------------------ parity with transformers


@pytest.fixture(scope="module")
def hf_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    )
    tok.train_from_iterator(["hello world", "the quick brown fox", "jumps over the lazy dog"], trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


PARITY_MESSAGES = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Compute (3+5)*2 — 书生"},
    {
        "role": "assistant",
        "content": "Adding.",
        "reasoning_content": "r",
        "tool_calls": [{**CALL, "function": {"name": "add", "arguments": {"a": 3, "b": 5}}}],
    },
    {"role": "tool", "content": "8", "tool_call_id": "call_0"},
]


@pytest.mark.parametrize("source", ["internlm2_5", "internlm2", "intern-s1", "qwen3"])
@pytest.mark.parametrize("thinking", [None, False])
def test_renders_like_transformers_apply_chat_template(hf_tokenizer, source, thinking):
    if source == "internlm2_5":  # the real model template
        ours, msgs, tools = ChatTemplate.resolve(INTERNLM2_5_HF, None), PARITY_MESSAGES[:2], None
    else:  # a built-in's source used as a model's own template
        ours, msgs, tools = ChatTemplate.from_jinja(tpl(source).source), PARITY_MESSAGES, [ADD]
    template = ours.source
    hf_tokenizer.chat_template = template
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    expected = hf_tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs)
    assert ours.render(msgs, tools=tools, bos_token="<s>", eos_token="</s>", enable_thinking=thinking) == expected
