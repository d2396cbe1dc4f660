"""Measure the demo model on held-out tool use, through any generator of replies.

A generator takes a list of `Request`s and returns the raw reply text of each (special tokens kept, greedy).
`pipeline_generator` runs our engine (what the tests use, and what the server runs); `train.py` brings its own
over the transformers model on the GPU. Replies are read with the parsers the server uses: the reasoning
parser first when the model thinks, then the tool-call parser of the template's family.

    python -m interndeploy.demo.evaluate [--model demo] [-n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from interndeploy.chat.reasoning import parse_reasoning
from interndeploy.chat.tool_calls import ParsedToolCall, get_tool_parser
from interndeploy.demo.corpus import Example, heldout_chains, heldout_tool_calls, template


@dataclass
class Request:
    template: str  # "intern-s1" | "qwen3"
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    enable_thinking: bool | None = None


Generator = Callable[[list[Request]], list[str]]


@dataclass
class Reply:
    reasoning: str | None
    content: str | None
    calls: list[ParsedToolCall]


def read_reply(text: str, req: Request) -> Reply:
    """Split a raw reply as the server does: reasoning, then tool calls (parsed only when tools were given)."""
    tpl = template(req.template)
    r = parse_reasoning(text, thinking=tpl.thinking_enabled(req.enable_thinking))
    content, calls = r.content, []
    if req.tools and content:
        parsed = get_tool_parser(tpl.family)().parse(content)
        content, calls = parsed.content, parsed.calls
    return Reply(r.reasoning, content, calls)


def call_matches(reply: Reply, expect: dict[str, Any]) -> bool:
    """One call, the expected name, exactly the expected arguments (types included: 5 is not "5")."""
    if len(reply.calls) != 1 or reply.calls[0].name != expect["name"]:
        return False
    got = json.loads(reply.calls[0].arguments)
    want = expect["arguments"]
    return got == want and all(type(got[k]) is type(v) for k, v in want.items())


def request_of(ex: Example) -> Request:
    return Request(ex.template, ex.messages, ex.tools, ex.enable_thinking)


def tool_call_accuracy(generate: Generator, examples: list[Example]) -> tuple[float, list[tuple[Example, str]]]:
    """(share of examples answered with exactly the expected call, the failures with their raw replies)."""
    texts = generate([request_of(ex) for ex in examples])
    failures = [
        (ex, t)
        for ex, t in zip(examples, texts, strict=True)
        if not call_matches(read_reply(t, request_of(ex)), ex.expect or {})
    ]
    return 1 - len(failures) / len(examples), failures


def chain_accuracy(
    generate: Generator, examples: list[Example], style: str = "tool", max_turns: int = 4
) -> tuple[float, list[tuple[Example, list]]]:
    """Run each add-then-mul chain to its end, executing the calls: the share whose final answer holds the
    right number. `style` "tool" sends results back as OpenAI `tool` messages after the assistant message with
    its calls (seed 000); "environment" sends only the assistant's content, then seed 004's
    `{'role': 'environment', 'content': '3+5=8', 'name': 'plugin'}`."""
    ops = {"add": (lambda a, b: a + b, "+"), "mul": (lambda a, b: a * b, "*")}
    convs = [list(ex.messages) for ex in examples]
    done: list[str | None] = [None] * len(examples)
    for _ in range(max_turns):
        todo = [i for i, d in enumerate(done) if d is None]
        if not todo:
            break
        reqs = [Request(examples[i].template, convs[i], examples[i].tools, examples[i].enable_thinking) for i in todo]
        for i, req, text in zip(todo, reqs, generate(reqs), strict=True):
            reply = read_reply(text, req)
            if not reply.calls:
                done[i] = reply.content or ""
                continue
            call = reply.calls[0]
            args = json.loads(call.arguments)
            if call.name not in ops or set(args) != {"a", "b"}:
                done[i] = f"bad call {call.name}({call.arguments})"
                continue
            fn, sym = ops[call.name]
            result = fn(args["a"], args["b"])
            if style == "tool":
                convs[i].append(
                    {
                        "role": "assistant",
                        "content": reply.content,
                        "tool_calls": [
                            {
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments},
                            }
                        ],
                    }
                )
                convs[i].append({"role": "tool", "content": str(result), "tool_call_id": call.id})
            else:
                convs[i].append({"role": "assistant", "content": reply.content})
                convs[i].append(
                    {"role": "environment", "content": f"{args['a']}{sym}{args['b']}={result}", "name": "plugin"}
                )
    ok = [d is not None and str(ex.expect["final"]) in d for ex, d in zip(examples, done, strict=True)]
    failures = [(ex, c) for ex, c, good in zip(examples, convs, ok, strict=True) if not good]
    return sum(ok) / len(ok), failures


# ---------------------------------------------------------------- our engine


def pipeline_generator(model: str = "demo", max_new_tokens: int = 256) -> tuple[Generator, Callable[[], None]]:
    """(generator over `pipeline(model)`, close). One engine per template; requests run concurrently."""
    from interndeploy import ChatTemplateConfig, GenerationConfig, pipeline

    pipes: dict[str, Any] = {}
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens, skip_special_tokens=False, spaces_between_special_tokens=False
    )

    def pipe_for(name: str) -> Any:
        if name not in pipes:
            cfg = None if name == "intern-s1" else ChatTemplateConfig(model_name=name)
            pipes[name] = pipeline(model, chat_template_config=cfg)
        return pipes[name]

    async def run(reqs: list[Request]) -> list[str]:
        async def one(req: Request) -> str:
            engine = pipe_for(req.template).engine
            ids = engine.encode_prompt(req.messages, tools=req.tools, enable_thinking=req.enable_thinking)
            text = ""
            async for out in engine.generate(ids, gen):
                text += out.text
            return text

        return list(await asyncio.gather(*(one(r) for r in reqs)))

    def generate(reqs: list[Request]) -> list[str]:
        # one template at a time: engines share the process-global forward context, so two must not step at once
        texts = [""] * len(reqs)
        for name in dict.fromkeys(r.template for r in reqs):
            idx = [i for i, r in enumerate(reqs) if r.template == name]
            for i, text in zip(idx, asyncio.run(run([reqs[i] for i in idx])), strict=True):
                texts[i] = text
        return texts

    def close() -> None:
        for p in pipes.values():
            p.close()

    return generate, close


# ---------------------------------------------------------------- through an OpenAI-compatible server


def _server_calls(base_url: str, examples: list[Example], max_concurrency: int = 256) -> list[Any]:
    """Each example's request sent to the server (greedy, the request's enable_thinking), its message back."""
    from openai import AsyncOpenAI

    async def run() -> list[Any]:
        client = AsyncOpenAI(api_key="none", base_url=f"{base_url}/v1", max_retries=0, timeout=1800)
        model = (await client.models.list()).data[0].id
        gate = asyncio.Semaphore(max_concurrency)

        async def one(ex: Example) -> Any:
            extra = {} if ex.enable_thinking is None else {"enable_thinking": ex.enable_thinking}
            async with gate:
                resp = await client.chat.completions.create(
                    model=model, messages=ex.messages, tools=ex.tools, temperature=0, max_tokens=256, extra_body=extra
                )
            return resp.choices[0].message

        try:
            return list(await asyncio.gather(*(one(ex) for ex in examples)))
        finally:
            await client.close()

    return asyncio.run(run())


def server_tool_call_accuracy(base_url: str, examples: list[Example]) -> tuple[float, list[tuple[Example, Any]]]:
    """`tool_call_accuracy` through a running server: the `tool_calls` it returns, parsed by its parser."""
    failures = []
    for ex, msg in zip(examples, _server_calls(base_url, examples), strict=True):
        calls = [ParsedToolCall(c.function.name, c.function.arguments, c.id) for c in msg.tool_calls or []]
        if not call_matches(Reply(None, msg.content, calls), ex.expect or {}):
            failures.append((ex, msg))
    return 1 - len(failures) / len(examples), failures


def server_chain_accuracy(base_url: str, examples: list[Example], style: str = "tool", max_turns: int = 4) -> float:
    """`chain_accuracy` through a running server, as the seeds' clients do it: style "tool" appends the returned
    message object itself and a `tool` message (seed 000), "environment" the message's content alone and seed
    004's environment message. Requests are sampled as seed 004 samples them (temperature 0.8, top_p 0.8)."""
    from openai import AsyncOpenAI

    ops = {"add": (lambda a, b: a + b, "+"), "mul": (lambda a, b: a * b, "*")}

    async def chain(client: Any, model: str, ex: Example) -> bool:
        messages: list[Any] = list(ex.messages)
        for _ in range(max_turns):
            resp = await client.chat.completions.create(
                model=model, messages=messages, tools=ex.tools, temperature=0.8, top_p=0.8, max_tokens=256
            )
            msg = resp.choices[0].message
            if not msg.tool_calls:
                return str(ex.expect["final"]) in (msg.content or "")
            call = msg.tool_calls[0].function
            args = json.loads(call.arguments)
            if call.name not in ops or set(args) != {"a", "b"}:
                return False
            fn, sym = ops[call.name]
            result = fn(args["a"], args["b"])
            if style == "tool":
                messages.append(msg)
                messages.append(
                    {"role": "tool", "name": call.name, "content": str(result), "tool_call_id": msg.tool_calls[0].id}
                )
            else:
                messages.append({"role": "assistant", "content": msg.content})
                messages.append(
                    {"role": "environment", "content": f"{args['a']}{sym}{args['b']}={result}", "name": "plugin"}
                )
        return False

    async def run() -> list[bool]:
        client = AsyncOpenAI(api_key="none", base_url=f"{base_url}/v1", max_retries=0, timeout=1800)
        try:
            model = (await client.models.list()).data[0].id
            return list(await asyncio.gather(*(chain(client, model, ex) for ex in examples)))
        finally:
            await client.close()

    ok = asyncio.run(run())
    return sum(ok) / len(ok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Held-out tool-use accuracy of a demo-style model.")
    p.add_argument("--model", default="demo")
    p.add_argument("-n", type=int, default=200, help="held-out prompts per format")
    p.add_argument("--chains", type=int, default=50, help="add-then-mul tasks per history style")
    args = p.parse_args(argv)
    generate, close = pipeline_generator(args.model)
    try:
        for fmt in ("intern-s1", "qwen3"):
            t = time.time()
            acc, failures = tool_call_accuracy(generate, heldout_tool_calls(args.n, fmt))
            print(f"{fmt}: tool calls {acc:.3f} on {args.n} held-out prompts ({time.time() - t:.0f} s)")
            for ex, text in failures[:3]:
                print(f"  expected {ex.expect}\n  got {text!r}")
        for style in ("tool", "environment"):
            t = time.time()
            acc, _ = chain_accuracy(generate, heldout_chains(args.chains), style)
            print(f"add-then-mul ({style} results): {acc:.3f} on {args.chains} ({time.time() - t:.0f} s)")
    finally:
        close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
