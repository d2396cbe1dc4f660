"""The bad-input catalogue: each input is answered with a 4xx carrying the OpenAI envelope (bounded in size), and
the server is healthy after each (it answers /health and still generates)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from interndeploy.config import EngineConfig
from interndeploy.engine.async_engine import AsyncEngine
from interndeploy.serve.openai import ServerSettings, build_app
from interndeploy.testing.http_server import ServerThread

from .harness import envelope

SESSION_LEN = 256
MAX_N = 4
MAX_BYTES = 1 << 20
HI = [{"role": "user", "content": "hello"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def server(internlm2_dir: Path) -> Iterator[ServerThread]:
    engine = AsyncEngine(str(internlm2_dir), EngineConfig(block_size=16, cpu_kv_budget_gib=0.05,
                                                           session_len=SESSION_LEN), model_name="m")
    settings = ServerSettings(max_n=MAX_N, max_request_bytes=MAX_BYTES)
    with ServerThread(build_app(engine, settings)) as srv:
        yield srv
    engine.shutdown()


@pytest.fixture(autouse=True)
def healthy_after(server: ServerThread) -> Iterator[None]:
    yield
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def fn(parameters: object) -> dict:
    return {"type": "function", "function": {"name": "lookup", "parameters": parameters}}


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


CASES = {
    "empty messages": ({"messages": []}, "messages"),
    "unknown role": ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    "content a number": ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    "content an object": ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages[0].content"),
    "text part without text": ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
                               "messages[0].content[0].text"),
    "max_tokens 0": ({"messages": HI, "max_tokens": 0}, "max_tokens"),
    "max_tokens negative": ({"messages": HI, "max_tokens": -5}, "max_tokens"),
    "max_tokens beyond session_len": ({"messages": HI, "max_tokens": SESSION_LEN}, "max_tokens"),
    "max_tokens 10**30": ({"messages": HI, "max_tokens": 10**30}, "max_tokens"),
    "n above --max-n": ({"messages": HI, "n": MAX_N + 1}, "n"),
    "n 10**30": ({"messages": HI, "n": 10**30}, "n"),
    "top_logprobs 21": ({"messages": HI, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    "tool schema properties a list": ({"messages": HI, "tools": [fn({"type": "object", "properties": []})]},
                                      "tools[0].function.parameters"),
    "tool schema bad pattern": ({"messages": HI, "tools": [fn({"type": "string", "pattern": "(("})]},
                                "tools[0].function.parameters"),
    "tool schema type a number": ({"messages": HI, "tools": [fn({"type": 5})]}, "tools[0].function.parameters"),
    "tool schema too deep": ({"messages": HI, "tools": [fn(nested(40))]}, "tools[0].function.parameters"),
    "tool schema not an object": ({"messages": HI, "tools": [fn("object")]}, "tools[0].function.parameters"),
    "tool_choice names a missing tool": ({"messages": HI, "tools": [fn({"type": "object"})],
                                          "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                                         "tool_choice"),
    "response_format schema does not compile": (
        {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}}}},
        "response_format"),
    "response_format unknown type name": ({"messages": HI, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "banana"}}}}, "response_format"),
    "response_format regex does not compile": ({"messages": HI, "response_format": {
        "type": "regex_schema", "regex_schema": "(("}}, "response_format"),
    "json_schema without a schema": ({"messages": HI, "response_format": {"type": "json_schema"}},
                                     "response_format"),
    "image_url part (text-only model)": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {
            "url": "https://example.com/cat.png"}}]}]}, "messages[0].content[1]"),
    "corrupt image data URL": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,!!!not-base64!!!"}}]}]}, "messages[0].content[0]"),
    "chat_template in the request": ({"messages": HI, "chat_template": "{% for x in range(10**9) %}{% endfor %}"},
                                     "chat_template"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_chat_request(server: ServerThread, name: str):
    body, param = CASES[name]
    error = envelope(httpx.post(server.url + CHAT, json={"model": "m", **body}, timeout=60), 400)
    assert error["param"] == param, error


RAW = {
    "malformed JSON": b'{"messages": [',
    "invalid UTF-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "not an object": b'"hello"',
    "empty body": b"",
    "NaN temperature": b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    "nested 20,000 deep": b'{"messages": ' + b"[" * 20000 + b"]" * 20000 + b"}",
}


@pytest.mark.parametrize("name", list(RAW))
def test_unparseable_body(server: ServerThread, name: str):
    r = httpx.post(server.url + CHAT, content=RAW[name], headers={"content-type": "application/json"}, timeout=60)
    envelope(r, 400)


def test_huge_prompt_is_a_fast_400(server: ServerThread):
    prompt = "the quick brown fox " * 40000  # 800 KB: under the body limit, far over session_len
    error = envelope(httpx.post(server.url + CHAT, json={"messages": [{"role": "user", "content": prompt}]},
                                timeout=60), 400)
    assert error["code"] == "context_length_exceeded" and str(SESSION_LEN) in error["message"]
    error = envelope(httpx.post(server.url + COMPLETIONS, json={"prompt": prompt}, timeout=60), 400)
    assert error["code"] == "context_length_exceeded"


def test_body_over_the_limit_is_413(server: ServerThread):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (MAX_BYTES + 1)}]}).encode()
    assert envelope(httpx.post(server.url + CHAT, content=big, headers={"content-type": "application/json"}),
                    413)["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = httpx.post(server.url + CHAT, content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert envelope(r, 413)["code"] == "request_too_large"


def test_completions_fan_out_and_logprobs(server: ServerThread):
    error = envelope(httpx.post(server.url + COMPLETIONS, json={"prompt": ["a", "b", "c"], "n": 2}), 400)
    assert error["param"] == "prompt" and error["code"] == "too_many_samples"
    assert envelope(httpx.post(server.url + COMPLETIONS, json={"prompt": "a", "logprobs": 21}), 400)["param"] == \
        "logprobs"
    assert envelope(httpx.post(server.url + COMPLETIONS, json={"prompt": [[-1, 5]]}), 400)["param"] == "prompt"


def test_still_serving_after_the_catalogue(server: ServerThread):
    ok = {"model": "m", "messages": HI, "max_tokens": 4, "temperature": 0,
          "tools": [fn({"type": "object", "properties": {"a": {"type": "int"}}})]}  # unknown type names pass
    r = httpx.post(server.url + CHAT, json=ok, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    r = httpx.post(server.url + CHAT, json={**ok, "n": MAX_N}, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == MAX_N
