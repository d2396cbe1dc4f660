"""Errors (status + OpenAI envelope), API keys, CORS, the concurrency limit, client disconnects and
/abort_request: the server answers each with a 4xx (never a 5xx) and stays healthy."""

from __future__ import annotations

import re
import threading
import time

import httpx
import openai
import pytest

from interndeploy.engine.async_engine import AsyncEngine
from interndeploy.testing.http_server import ServerThread

from .conftest import API_KEY, MODEL_NAME, ORIGIN, SESSION_LEN, ScriptedEngine

HI = [{"role": "user", "content": "hello"}]
LONG = {"model": MODEL_NAME, "messages": HI, "max_tokens": 1000, "stream": True, "ignore_eos": True}


def post(srv: ServerThread, body: object = None, *, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(srv.url + path, timeout=60, **kwargs)


def envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": HI, "temperature": -1}, "temperature"),
        ({"messages": HI, "top_p": 0}, "top_p"),
        ({"messages": HI, "n": 0}, "n"),
        ({"messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"messages": HI, "stop": 5}, "stop"),
        ({"messages": HI, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": HI, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"messages": HI, "stop_token_ids": [10**9]}, "stop_token_ids"),
        ({"messages": HI, "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
         "tools[0].function.parameters"),
        ({"messages": HI, "tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"messages": HI, "tool_choice": "required"}, "tool_choice"),
        ({"messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"messages": HI, "response_format": {"type": "xml"}}, "response_format.type"),
        ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"schema": "{"}}},
         "response_format"),
        ({"messages": HI, "chat_template_kwargs": {"tools": []}}, "chat_template_kwargs.tools"),
        ({"messages": HI, "chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs.enable_thinking"),
        ({"messages": HI, "enable_thinking": "maybe"}, "enable_thinking"),
        ({"messages": HI, "logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0]"),
    ],
)
def test_invalid_fields_are_400_with_param(server: ServerThread, body: dict, param: str):
    error = envelope(post(server, {"model": MODEL_NAME, **body}), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"messages": [', {"content-type": "application/json"}),
        (b"not json at all", {}),
        (b'{"messages": "\xff\xfe bad utf-8"}', {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
    ],
)
def test_malformed_bodies_are_400(server: ServerThread, content: bytes, headers: dict):
    envelope(post(server, content=content, headers=headers), 400)


def test_completion_errors(server: ServerThread):
    cases = [({"prompt": []}, "prompt"), ({"prompt": [[1, 10**9]]}, "prompt"),
             ({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
             ({"prompt": "x", "best_of": 3}, "best_of")]
    for body, param in cases:
        assert envelope(post(server, body, path="/v1/completions"), 400)["param"] == param


def test_unknown_model_route_and_method(server: ServerThread):
    error = envelope(post(server, {"model": "gpt-4", "messages": HI}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert envelope(httpx.get(server.url + "/v1/nothing"), 404)["code"] == "not_found"
    assert envelope(httpx.get(server.url + "/v1/chat/completions"), 405)["code"] == "method_not_allowed"


def test_prompt_plus_max_tokens_over_session_len(server: ServerThread, serve_engine: AsyncEngine):
    error = envelope(post(server, {"messages": HI, "max_tokens": SESSION_LEN}), 400)
    assert error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"
    prompt_len = len(serve_engine.encode_prompt(HI))
    numbers = {int(x) for x in re.findall(r"\d+", error["message"])}
    assert {prompt_len, SESSION_LEN, prompt_len + SESSION_LEN, SESSION_LEN - prompt_len} <= numbers
    error = envelope(post(server, {"messages": [{"role": "user", "content": "x " * SESSION_LEN}]}), 400)
    assert str(SESSION_LEN) in error["message"]
    error = envelope(post(server, {"messages": HI, "max_completion_tokens": SESSION_LEN}), 400)
    assert error["param"] == "max_completion_tokens"


def test_openai_client_sees_the_errors(server: ServerThread):
    c = openai.OpenAI(api_key="EMPTY", base_url=server.url + "/v1", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=SESSION_LEN)
    assert info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.BadRequestError):  # raised before any byte of the stream
        c.chat.completions.create(model=MODEL_NAME, messages=HI, stream=True, max_tokens=SESSION_LEN)
    assert httpx.get(server.url + "/health").status_code == 200
    ok = c.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------- keys, CORS, limit


def test_api_keys(guarded_server: ServerThread):
    url = guarded_server.url
    body = {"model": MODEL_NAME, "messages": HI, "max_tokens": 2}
    assert envelope(post(guarded_server, body), 401)["code"] == "invalid_api_key"
    wrong = post(guarded_server, body, headers={"Authorization": "Bearer sk-wrong"})
    assert envelope(wrong, 401)["code"] == "invalid_api_key"
    assert envelope(httpx.get(url + "/v1/models", headers={"Authorization": API_KEY}), 401)  # no Bearer
    assert post(guarded_server, body, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(url + "/health").status_code == 200
    assert envelope(httpx.get(url + "/metrics"), 401)  # every route but /health needs the key
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert envelope(post(guarded_server, {"abort_all": True}, path="/abort_request"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-wrong", base_url=url + "/v1", max_retries=0).models.list()
    models = openai.OpenAI(api_key=API_KEY, base_url=url + "/v1", max_retries=0).models.list()
    assert models.data[0].id == MODEL_NAME
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(url + "/", headers=auth).status_code == 404  # --disable-fastapi-docs
    assert httpx.get(url + "/openapi.json", headers=auth).status_code == 404


def test_cors(guarded_server: ServerThread, server: ServerThread):
    preflight = httpx.options(guarded_server.url + "/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    denied = httpx.get(guarded_server.url + "/v1/models", headers={"Origin": ORIGIN})  # 401, still with CORS
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(guarded_server.url + "/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    plain = httpx.get(server.url + "/health", headers={"Origin": ORIGIN})  # no --allow-origins: no CORS
    assert "access-control-allow-origin" not in plain.headers


def test_concurrency_limit(guarded_server: ServerThread, scripted_engine: ScriptedEngine):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": MODEL_NAME, "messages": HI, "max_tokens": 8, "enable_thinking": False}
    scripted_engine.reply = "a reply"
    scripted_engine.gate.clear()
    try:
        first = threading.Thread(target=lambda: results.append(post(guarded_server, body, headers=headers)))
        results: list[httpx.Response] = []
        first.start()
        deadline = time.monotonic() + 10
        while metrics(guarded_server)["interndeploy_http_requests_in_flight"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = post(guarded_server, body, headers=headers)
        error = envelope(busy, 503)
        assert busy.headers["retry-after"] == "1" and error["code"] == "server_busy"
        assert httpx.get(guarded_server.url + "/health").status_code == 200  # not limited
    finally:
        scripted_engine.gate.set()
    first.join(timeout=30)
    assert results[0].status_code == 200 and results[0].json()["choices"][0]["message"]["content"] == "a reply"
    assert post(guarded_server, body, headers=headers).status_code == 200


# ---------------------------------------------------------------- disconnects and aborts


def metrics(srv: ServerThread) -> dict[str, float]:
    text = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(interndeploy_\w+) (\S+)$", text, re.M)}


def wait_idle(srv: ServerThread, timeout: float = 15.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(srv)
        if m["interndeploy_kv_blocks_used"] == 0 and m["interndeploy_num_requests_running"] == 0:
            return m
        assert time.monotonic() < deadline, f"KV blocks not released: {m}"
        time.sleep(0.05)


def test_disconnect_mid_stream_frees_blocks(server: ServerThread):
    before = wait_idle(server)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=LONG, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        busy = metrics(server)
        assert busy["interndeploy_kv_blocks_used"] > 0 and busy["interndeploy_num_requests_running"] == 1
    after = wait_idle(server)  # the stream was closed after ~5 of 1000 tokens
    assert after["interndeploy_kv_blocks_free"] == after["interndeploy_kv_blocks_total"]
    assert after["interndeploy_requests_finished_total"] == before["interndeploy_requests_finished_total"] + 1
    assert after["interndeploy_generation_tokens_total"] - before["interndeploy_generation_tokens_total"] < 500
    assert httpx.get(server.url + "/health").status_code == 200


def test_disconnect_while_waiting_for_a_full_response(scripted_server: ServerThread, scripted_engine: ScriptedEngine):
    scripted_engine.reply = "never sent"
    closed = len(scripted_engine.closed_early)
    scripted_engine.gate.clear()
    try:
        body = {"model": MODEL_NAME, "messages": HI, "max_tokens": 8}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(scripted_server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.3))
        deadline = time.monotonic() + 10
        while len(scripted_engine.closed_early) == closed:  # the server noticed and closed the engine stream
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        scripted_engine.gate.set()


def test_abort_request_by_session_id(server: ServerThread):
    events: list[str] = []

    def consume() -> None:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**LONG, "session_id": 77},
                          timeout=60) as r:
            events.extend(line for line in r.iter_lines() if line)

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 10
    while metrics(server)["interndeploy_num_requests_running"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert post(server, {"session_id": 77}, path="/abort_request").json() == {"aborted": 1}
    reader.join(timeout=30)
    assert events[-1] == "data: [DONE]"
    assert '"finish_reason":"abort"' in events[-2]
    wait_idle(server)
    assert envelope(post(server, {"session_id": 77}, path="/abort_request"), 404)["param"] == "session_id"
    assert envelope(post(server, {}, path="/abort_request"), 400)
