"""The demo model through the real OpenAI server and the real `openai` client (issue 4's bar).

Held-out tool use: >= 200 prompts per format whose function names, argument names and numbers never occur in
training (`interndeploy.demo.corpus.heldout_tool_calls`), answered with the right name and exactly the right
arguments in >= 90% of cases, with `--tool-call-parser intern-s1` and with `qwen3` under `--chat-template qwen3`.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from openai import OpenAI

from interndeploy.demo import DEMO_MODEL_ID, corpus, evaluate

from .seed_scripts import FUNCTION_CALL_004, SEED_BASE_URL, WEATHER_S1, WEATHER_S1_PRO

N_HELDOUT = 200
N_CHAINS = 20
BAR = 0.9


def _heldout(fmt: str) -> list[corpus.Example]:
    # thinking off (as seed 000 sends it with tools) keeps CI fast; `python -m interndeploy.demo.evaluate`
    # measures the training mix of thinking on and off
    return corpus.heldout_tool_calls(N_HELDOUT, fmt, enable_thinking=False)


def _client(srv) -> OpenAI:  # noqa: ANN001
    return OpenAI(api_key="none", base_url=f"{srv.url}/v1", max_retries=0, timeout=600)


def _report(acc: float, failures: list) -> str:
    lines = [f"accuracy {acc:.3f}"]
    for ex, msg in failures[:5]:
        lines.append(f"  expected {json.dumps(ex.expect, ensure_ascii=False)}\n  got {msg}")
    return "\n".join(lines)


def test_heldout_tool_calls_intern_s1_parser(demo_s1_server):
    acc, failures = evaluate.server_tool_call_accuracy(demo_s1_server.url, _heldout("intern-s1"))
    assert acc >= BAR, _report(acc, failures)


def test_heldout_tool_calls_qwen3_template_and_parser(demo_qwen3_server):
    acc, failures = evaluate.server_tool_call_accuracy(demo_qwen3_server.url, _heldout("qwen3"))
    assert acc >= BAR, _report(acc, failures)


@pytest.mark.parametrize("style", ["tool", "environment"])
def test_add_then_mul_reaches_the_final_number(demo_server, style):
    """(x+y)*z with held-out numbers: add, then mul on the result, then the answer; sampled like seed 004."""
    acc = evaluate.server_chain_accuracy(demo_server.url, corpus.heldout_chains(N_CHAINS), style)
    assert acc >= BAR, acc


def test_served_model_id(demo_server):
    assert [m.id for m in _client(demo_server).models.list().data] == [DEMO_MODEL_ID]


def test_thinking_on_gives_reasoning_and_an_answer(demo_server):
    msg = (
        _client(demo_server)
        .chat.completions.create(
            model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "who are you"}], temperature=0
        )
        .choices[0]
        .message
    )
    assert (getattr(msg, "reasoning_content", None) or "").strip()
    assert "InternDeploy" in msg.content and "</think>" not in msg.content


@pytest.mark.parametrize("extra", [{"enable_thinking": False}, {"chat_template_kwargs": {"enable_thinking": False}}])
@pytest.mark.parametrize(
    "question",
    ["who are you", "你好", "Tell me a story about a fox and a watermelon"],
)
def test_thinking_off_gives_no_reasoning(demo_server, extra, question):
    msg = (
        _client(demo_server)
        .chat.completions.create(
            model=DEMO_MODEL_ID, messages=[{"role": "user", "content": question}], temperature=0, extra_body=extra
        )
        .choices[0]
        .message
    )
    assert not getattr(msg, "reasoning_content", None), msg
    assert msg.content and "<think>" not in msg.content and "</think>" not in msg.content


def _run_seed(script: str, srv) -> dict:  # noqa: ANN001
    namespace: dict = {"__name__": "__seed__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(script.replace(SEED_BASE_URL, f"{srv.url}/v1"), "seed", "exec"), namespace)  # noqa: S102
    return namespace


def test_seed_004_function_call_script(demo_server):
    """Seed 004 section 4.2 unchanged but its base URL, against a server started with no parser flags."""
    ns = _run_seed(FUNCTION_CALL_004, demo_server)
    assert (ns["func1_name"], json.loads(ns["func1_args"]), ns["func1_out"]) == ("add", {"a": 3, "b": 5}, 8)
    assert (ns["func2_name"], json.loads(ns["func2_args"]), ns["func2_out"]) == ("mul", {"a": 8, "b": 2}, 16)


@pytest.mark.parametrize("script", [WEATHER_S1, WEATHER_S1_PRO], ids=["seed000-002", "seed001"])
def test_seed_weather_scripts(demo_server, script):
    """The Intern-S1 cards' weather example runs to its end: a tool call, then an answer with the result."""
    ns = _run_seed(script, demo_server)
    assert ns["response"].choices[0].message.content
