"""The real server on the tiny InternLM2 model, through the `openai` client and raw HTTP: endpoints, streaming,
n, usage, stop strings, logprobs, response_format, errors and the server staying healthy after them."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from interndeploy.engine.async_engine import AsyncEngine
from interndeploy.serve.openai import ServerSettings, build_app
from interndeploy.testing.http_server import ServerThread

from .conftest import MODEL_NAME, SESSION_LEN

HI = [{"role": "user", "content": "hello, who are you?"}]


def client(srv: ServerThread, api_key: str = "EMPTY") -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=srv.url + "/v1", max_retries=0, timeout=60)


def greedy(c: openai.OpenAI, **kwargs):
    kwargs = {"model": MODEL_NAME, "messages": HI, "temperature": 0, "max_tokens": 10,
              "extra_body": {"ignore_eos": True}, **kwargs}
    return c.chat.completions.create(**kwargs)


def test_models_lists_the_model_name(server: ServerThread, serve_engine: AsyncEngine):
    models = client(server).models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert models[0].model_extra["max_model_len"] == SESSION_LEN
    assert models[0].model_extra["root"] == str(serve_engine.info.path)


def test_health_and_docs(server: ServerThread):
    assert httpx.get(server.url + "/health").status_code == 200
    assert "swagger" in httpx.get(server.url + "/").text.lower()
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/encode", "/abort_request"} <= set(paths)


def test_chat_usage_and_length(server: ServerThread, serve_engine: AsyncEngine):
    r = greedy(client(server), max_tokens=7)
    prompt_len = len(serve_engine.encode_prompt(HI))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL_NAME
    assert r.usage.prompt_tokens == prompt_len
    assert r.usage.completion_tokens == 7 and r.usage.total_tokens == prompt_len + 7
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].message.tool_calls is None
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})


def test_stream_matches_non_stream(server: ServerThread):
    c = client(server)
    full = greedy(c, logprobs=True, top_logprobs=2)
    chunks = list(greedy(c, stream=True, stream_options={"include_usage": True}, logprobs=True, top_logprobs=2))
    streamed_logprobs = [e for ch in chunks if ch.choices and ch.choices[0].logprobs
                         for e in ch.choices[0].logprobs.content]
    assert streamed_logprobs == full.choices[0].logprobs.content
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_sse_wire_format_ends_with_done(server: ServerThread):
    body = {"model": MODEL_NAME, "messages": HI, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_n_samples(server: ServerThread):
    c = client(server)
    r = c.chat.completions.create(model=MODEL_NAME, messages=HI, n=3, max_tokens=6, temperature=1.0,
                                  extra_body={"ignore_eos": True})
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 18
    assert len({ch.message.content for ch in r.choices}) > 1  # independent samples
    chunks = list(c.chat.completions.create(model=MODEL_NAME, messages=HI, n=2, max_tokens=4, stream=True,
                                            extra_body={"ignore_eos": True}))
    finished = {ch.choices[0].index: ch.choices[0].finish_reason for ch in chunks if ch.choices[0].finish_reason}
    assert finished == {0: "length", 1: "length"}


def test_stop_strings(server: ServerThread):
    c = client(server)
    text = greedy(c, max_tokens=16).choices[0].message.content
    start = next(i for i in range(2, len(text) - 3) if text[i : i + 3].strip() and "\ufffd" not in text[i : i + 3])
    stop = text[start : start + 3]
    expected = text[: text.index(stop)]
    r = greedy(c, max_tokens=16, stop=[stop, "never-seen-stop"])
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    kept = greedy(c, max_tokens=16, stop=stop, extra_body={"ignore_eos": True, "include_stop_str_in_output": True})
    assert kept.choices[0].message.content == expected + stop


def test_chat_logprobs(server: ServerThread):
    r = greedy(client(server), max_tokens=5, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0])  # greedy picks the best token
        assert entry.token == entry.top_logprobs[0].token and entry.bytes == list(entry.token.encode())
    assert greedy(client(server), max_tokens=2).choices[0].logprobs is None


def test_response_format_json(server: ServerThread):
    schema = {"type": "object", "additionalProperties": False, "required": ["ok", "color"],
              "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}}}
    c = client(server)
    json_schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    r = c.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=40, temperature=0.8, seed=3,
                                  response_format=json_schema)
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"ok", "color"} and isinstance(value["ok"], bool) and value["color"] in ("red", "green")
    r = c.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=40, temperature=0.8, seed=1,
                                  response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_completions(server: ServerThread, serve_engine: AsyncEngine):
    c = client(server)
    ids = serve_engine.tokenizer.encode("the quick brown fox")
    r = c.completions.create(model=MODEL_NAME, prompt=["hello world", ids], n=2, max_tokens=4, temperature=0.9,
                             extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == len(serve_engine.tokenizer.encode("hello world")) + len(ids)
    assert r.usage.completion_tokens == 16
    greedy_args = {"model": MODEL_NAME, "prompt": "hello world", "max_tokens": 6, "temperature": 0,
                   "extra_body": {"ignore_eos": True}}
    full = c.completions.create(**greedy_args, logprobs=2)
    lp = full.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(**greedy_args, stream=True))
    assert streamed == full.choices[0].text
    echoed = c.completions.create(**greedy_args, echo=True)
    assert echoed.choices[0].text == "hello world" + full.choices[0].text


def test_encode(server: ServerThread, serve_engine: AsyncEngine):
    tok = serve_engine.tokenizer
    r = httpx.post(server.url + "/v1/encode", json={"input": "hello world"}).json()
    assert r == {"input_ids": tok.encode("hello world"), "length": len(tok.encode("hello world"))}
    r = httpx.post(server.url + "/v1/encode", json={"input": ["a b", "c"], "add_bos": False}).json()
    assert r["input_ids"] == [tok.encode("a b", add_bos=False), tok.encode("c", add_bos=False)]
    assert r["length"] == [len(x) for x in r["input_ids"]]
    r = httpx.post(server.url + "/v1/encode", json={"input": "hi", "do_preprocess": True}).json()
    assert r["input_ids"] == serve_engine.encode_prompt("hi")


def test_clients_echo_assistant_messages_back(server: ServerThread):
    """Seed 000/004 shapes: the previous message object (with null fields), tool results, environment turns."""
    c = client(server)
    first = greedy(c, max_tokens=3)
    message = first.choices[0].message
    assert message.refusal is None  # the client sends these nulls back
    history = [*HI, message,
               {"role": "tool", "name": "f", "content": '{"temperature": 26.1}', "tool_call_id": "call_1"},
               {"role": "assistant", "content": None},
               {"role": "environment", "content": "3+5=8", "name": "plugin"},
               {"role": "user", "content": [{"type": "text", "text": "and now?"}]}]
    assert greedy(c, messages=history, max_tokens=3).choices[0].finish_reason == "length"


def test_metrics(server: ServerThread, serve_engine: AsyncEngine):
    def scrape() -> dict[str, float]:
        r = httpx.get(server.url + "/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(interndeploy_\w+) (\S+)$", r.text, re.M)}

    before = scrape()
    greedy(client(server), max_tokens=5)
    after = scrape()
    prompt_len = len(serve_engine.encode_prompt(HI))
    assert after["interndeploy_prompt_tokens_total"] - before["interndeploy_prompt_tokens_total"] == prompt_len
    assert after["interndeploy_generation_tokens_total"] - before["interndeploy_generation_tokens_total"] == 5
    assert after["interndeploy_requests_finished_total"] - before["interndeploy_requests_finished_total"] == 1
    for name in ("time_to_first_token_seconds", "time_per_output_token_seconds", "e2e_request_latency_seconds"):
        assert after[f"interndeploy_{name}_count"] - before[f"interndeploy_{name}_count"] == 1
    assert after["interndeploy_kv_blocks_total"] == serve_engine.engine.block_manager.num_blocks
    assert after["interndeploy_num_requests_waiting"] == 0 and "interndeploy_prefix_cache_hit_rate" in after


def test_metrics_can_be_disabled(serve_engine: AsyncEngine):
    with TestClient(build_app(serve_engine, ServerSettings(enable_metrics=False))) as c:
        assert c.get("/metrics").status_code == 404 and c.get("/health").status_code == 200
        assert c.get("/v1/models").json()["data"][0]["id"] == MODEL_NAME
