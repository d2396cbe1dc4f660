"""The demo model's synthetic corpus: deterministic conversations rendered by our own chat templates.

An `Example` is one request as a client would send it (OpenAI-style messages, tools, enable_thinking, the
template the server uses) plus the assistant message the model should reply with. `render` turns it into
(prompt text, completion text) with `ChatTemplate.from_builtin("intern-s1" | "qwen3")`, the very code the
engine runs at inference, so the training text is byte-identical to what the server renders:

    prompt      = template.render(messages, add_generation_prompt=True, tools, enable_thinking)
    full        = template.render(messages + [reply], add_generation_prompt=False, ...)
    completion  = full[len(prompt):] cut after the first stop token (<|action_end|> or <|im_end|>)

Families (weights in `FAMILIES`): a tool call picked from the tools block with arguments copied from the
question; an answer quoting a tool result; seed 004's add-then-mul chains, with results coming back as `tool`
messages (call kept in history) or as `environment` messages after an assistant turn whose call was dropped;
plain chat; chat while tools are offered. Everything is drawn from one `random.Random(seed)`, so
`generate(n, seed, split)` returns the same list on every machine.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from interndeploy.chat.templates import ChatTemplate
from interndeploy.demo import smalltalk
from interndeploy.demo.tools import (
    Function,
    answer_for,
    arithmetic_functions,
    call_args,
    make_function,
    question,
    result_for,
    tool_result_text,
    weather_functions,
    weather_question,
)
from interndeploy.demo.words import Lexicon

FORMATS = ("intern-s1", "qwen3")
BOS = "<s>"
_STOPS = {"intern-s1": ("<|action_end|>", "<|im_end|>"), "qwen3": ("<|im_end|>",)}
SYSTEMS = (
    "You are a helpful assistant.",
    "You are a helpful assistant that can call functions.",
    "你是一个友好的小助手，负责解决问题.",
    "You are InternDeploy's demo model.",
    "Answer briefly.",
    "你是一个乐于助人的助手。",
)


@dataclass
class Example:
    template: str  # "intern-s1" | "qwen3": the chat template the server renders with
    messages: list[dict[str, Any]]  # the request's messages
    tools: list[dict[str, Any]] | None  # the request's tools
    enable_thinking: bool | None  # as the request sends it; None: not sent
    reply: dict[str, Any]  # the assistant message to learn: content, reasoning_content, tool_calls
    task: str  # family name
    expect: dict[str, Any] | None = None  # {"name", "arguments"} of the expected call, or {"answer": text}


@lru_cache(maxsize=4)
def template(name: str) -> ChatTemplate:
    return ChatTemplate.from_builtin(name)


def thinking_on(ex: Example) -> bool:
    return template(ex.template).thinking_enabled(ex.enable_thinking)


def render(ex: Example) -> tuple[str, str]:
    """(prompt text, completion text) of an example, exactly as the engine would see and should produce them."""
    tpl = template(ex.template)
    kwargs = {"tools": ex.tools, "enable_thinking": ex.enable_thinking, "bos_token": BOS}
    prompt = tpl.render(ex.messages, add_generation_prompt=True, **kwargs)
    full = tpl.render([*ex.messages, ex.reply], add_generation_prompt=False, **kwargs)
    if not full.startswith(prompt):
        raise AssertionError(f"reply does not extend the prompt:\n{prompt!r}\n---\n{full!r}")
    completion = full[len(prompt) :]
    cuts = [completion.find(s) + len(s) for s in _STOPS[ex.template] if s in completion]
    return prompt, completion[: min(cuts)]


# ---------------------------------------------------------------- messages


def _call_message(name: str, args: dict[str, Any], call_id: str, content: str, reasoning: str | None) -> dict:
    msg: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
            }
        ],
    }
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


def _reply(content: str, reasoning: str | None, call: tuple[str, dict] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    if call is not None:
        name, args = call
        msg["tool_calls"] = [{"type": "function", "function": {"name": name, "arguments": args}}]
    return msg


def _args_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items()) or "no arguments"


class _Builder:
    """Draws one example at a time from a shared random stream."""

    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng = rng
        self.lex = Lexicon(rng, split)
        self.split = split

    def call_id(self) -> str:
        return f"call_{self.rng.getrandbits(48):012x}"

    def setting(self, fmt: str | None = None) -> tuple[str, bool | None, bool]:
        """(template, enable_thinking as sent, whether the model thinks)."""
        r = self.rng
        fmt = fmt or r.choices(FORMATS, weights=(62, 38))[0]
        if fmt == "intern-s1":
            sent = r.choices((None, True, False), weights=(40, 10, 50))[0]
        else:
            sent = r.choices((None, True, False), weights=(35, 5, 60))[0]
        return fmt, sent, sent is not False

    def system(self, messages: list[dict]) -> None:
        if self.rng.random() < 0.25:
            messages.insert(0, {"role": "system", "content": self.rng.choice(SYSTEMS)})

    def chat_history(self, zh: bool, max_turns: int = 2) -> list[dict]:
        """0-`max_turns` earlier plain-chat turns."""
        out: list[dict] = []
        for _ in range(self.rng.choice((0, 0, 0, 1, 1, max_turns))):
            q, _, a = smalltalk.chat_turn(self.lex, zh)
            out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return out

    # ---- families

    def chat(self, with_tools: bool = False) -> Example:
        r = self.rng
        fmt, sent, think = self.setting()
        if fmt == "qwen3" and think and not with_tools:
            # Qwen3's prompt with thinking on and no tools is Intern-S1's with thinking off, where the demo model
            # must not think: the model's own template wins, so Qwen3 chat without tools is trained unthinking
            sent, think = False, False
        zh = r.random() < 0.35
        messages = self.chat_history(zh)
        if r.random() < 0.08:  # seed 000's "who are you / I am an AI / AGI is?"
            messages = [{"role": "user", "content": "who are you"}, {"role": "assistant", "content": "I am an AI"}]
        if with_tools:
            q, why, a = (smalltalk.greeting if r.random() < 0.6 else smalltalk.identity)(r, zh)
        else:
            q, why, a = smalltalk.chat_turn(self.lex, zh)
        messages.append({"role": "user", "content": q})
        self.system(messages)
        tools = None
        if with_tools:
            tools = [make_function(self.lex, set()).tool() for _ in range(r.randint(1, 3))]
        return Example(fmt, messages, tools, sent, _reply(a, why if think else None), "chat", {"answer": a})

    def pick_tools(self) -> tuple[Function, list[Function], str]:
        """(target, all tools in prompt order, kind)."""
        r = self.rng
        if r.random() < 0.15 and self.split == "train":
            fns = weather_functions(self.lex)
            target = r.choice(fns)
            others = [make_function(self.lex, {f.name for f in fns}) for _ in range(r.choice((0, 0, 1)))]
            tools = fns + others
            kind = "weather"
        else:
            n = r.choices((1, 2, 3, 4), weights=(25, 35, 25, 15))[0]
            tools, names = [], set()
            while len(tools) < n:
                f = make_function(self.lex, names)
                if f.phrase not in {t.phrase for t in tools}:
                    names.add(f.name)
                    tools.append(f)
            target = r.choice(tools)
            kind = "tool"
        return target, tools, kind

    def tool_call(self, fmt: str | None = None, stage: str | None = None) -> Example:
        """A question answered by a call (stage "call") or a call's result answered (stage "answer")."""
        r = self.rng
        fmt, sent, think = self.setting(fmt)
        zh = r.random() < 0.25
        target, fns, kind = self.pick_tools()
        args = call_args(target, self.lex)
        if kind == "weather":
            q = weather_question(target, args, self.lex, zh)
        else:
            q = question(target, args, r, zh)
        messages = self.chat_history(zh, 1) + [{"role": "user", "content": q}]
        self.system(messages)
        tools = [f.tool() for f in fns]
        if zh:
            why = f"用户想查询{target.phrase}，我需要调用 {target.name}，参数 {_args_text(args)}。"
        else:
            why = f"The user wants the {target.phrase}. I will call {target.name} with {_args_text(args)}."
        thought = "" if r.random() < (0.7 if think else 0.45) else f"I will call {target.name}."
        stage = stage or ("call" if r.random() < 0.72 else "answer")
        if stage == "call":
            reply = _reply(thought, why if think else None, (target.name, args))
            return Example(fmt, messages, tools, sent, reply, kind, {"name": target.name, "arguments": args})
        result = result_for(target, args, self.lex)
        keep_reasoning = think and r.random() < 0.6
        messages.append(_call_message(target.name, args, self.call_id(), thought, why if keep_reasoning else None))
        if r.random() < 0.75 or fmt == "qwen3":
            messages.append(
                {
                    "role": "tool",
                    "name": target.name,
                    "content": tool_result_text(result),
                    "tool_call_id": messages[-1]["tool_calls"][0]["id"],
                }
            )
        else:
            messages.append({"role": "environment", "name": "plugin", "content": tool_result_text(result)})
        answer = answer_for(target, result, zh, r)
        why2 = "工具返回了结果，我来告诉用户。" if zh else "The tool returned the result. I will tell the user."
        return Example(
            fmt, messages, tools, sent, _reply(answer, why2 if think else None), kind + "_answer", {"answer": answer}
        )

    def arithmetic(
        self, fmt: str | None = None, pattern: str | None = None, stage: int | None = None, seed_tools: bool = False
    ) -> Example:
        """Seed 004's chains: (x+y)*z through add then mul, and its variants; train one step of the chain."""
        r = self.rng
        fmt, sent, think = self.setting(fmt)
        zh = r.random() < 0.3
        fns = arithmetic_functions(r, True if seed_tools else None)
        pattern = pattern or r.choices(("add_mul", "mul_add", "add_add", "add", "mul"), weights=(45, 15, 10, 15, 15))[0]
        op1, op2 = {
            "add_mul": ("add", "mul"),
            "mul_add": ("mul", "add"),
            "add_add": ("add", "add"),
            "add": ("add", None),
            "mul": ("mul", None),
        }[pattern]
        sym = {"add": "+", "mul": "*"}
        while True:  # in training, intermediate and final results are training numbers too
            big = r.random() < 0.35
            x, y, z = (abs(self.lex.integer()) if big else self.lex.small_integer(1, 99) for _ in range(3))
            first = x + y if op1 == "add" else x * y
            steps = [(op1, x, y, first)]
            if op2:
                steps.append((op2, first, z, first + z if op2 == "add" else first * z))
            if self.split == "heldout" or all(self.lex.number_ok(s[3]) for s in steps):
                break
        final = steps[-1][3]
        q = _arith_question(pattern, x, y, z, zh, r)
        tool_fns = [fns["add"], fns["mul"]]
        if r.random() < 0.3:
            tool_fns += [fns["sub"], fns["div"]][: r.randint(1, 2)]
        if r.random() < 0.25:
            r.shuffle(tool_fns)
        tools = [f.tool() for f in tool_fns]
        messages: list[dict] = [{"role": "user", "content": q}]
        self.system(messages)
        stage = len(steps) if stage is None and r.random() < 0.3 else stage
        stage = r.randint(0, len(steps) - 1) if stage is None else stage
        env_style = fmt == "intern-s1" and r.random() < 0.5
        pa, pb = (p.name for p in fns["add"].params)
        for i in range(stage):
            op, a, b, res = steps[i]
            fn = fns[op]
            why = _arith_reason(steps, i, fns, zh)
            thought = "" if r.random() < 0.6 else _arith_thought(op, a, b, zh)
            keep_reasoning = think and r.random() < 0.5
            if env_style and r.random() < 0.75:  # seed 004: the call itself is dropped from the history
                content = thought
                if think and r.random() < 0.1:  # a server without a reasoning parser returns the thought raw
                    content = f"{why}\n</think>\n{thought}"
                messages.append({"role": "assistant", "content": content if content or r.random() < 0.5 else None})
            else:
                messages.append(
                    _call_message(fn.name, {pa: a, pb: b}, self.call_id(), thought, why if keep_reasoning else None)
                )
            if env_style:
                messages.append({"role": "environment", "name": "plugin", "content": f"{a}{sym[op]}{b}={res}"})
            else:
                text = str(res) if r.random() < 0.5 else json.dumps({"result": res})
                messages.append({"role": "tool", "name": fn.name, "content": text, "tool_call_id": self.call_id()})
        why = _arith_reason(steps, stage, fns, zh)
        if stage == len(steps):
            answer = f"结果是 {final}。" if zh else r.choice((f"The result is {final}.", f"The answer is {final}."))
            return Example(
                fmt,
                messages,
                tools,
                sent,
                _reply(answer, why if think else None),
                "arith_answer",
                {"answer": answer, "final": final},
            )
        op, a, b, _ = steps[stage]
        thought = "" if r.random() < 0.6 else _arith_thought(op, a, b, zh)
        reply = _reply(thought, why if think else None, (fns[op].name, {pa: a, pb: b}))
        expect = {"name": fns[op].name, "arguments": {pa: a, pb: b}, "final": final}
        return Example(fmt, messages, tools, sent, reply, "arith", expect)


def _arith_question(pattern: str, x: int, y: int, z: int, zh: bool, r: random.Random) -> str:
    forms = {
        "add_mul": (
            (
                f"Compute ({x}+{y})*{z}",
                f"What is ({x} + {y}) * {z}?",
                f"Calculate ({x}+{y})*{z}",
                f"Add {x} and {y}, then multiply the result by {z}.",
                f"compute ({x}+{y})*{z} with the tools",
            ),
            (f"计算 ({x}+{y})*{z}", f"先计算{x}加{y}，再乘以{z}", f"请用工具计算 ({x}+{y})*{z}"),
        ),
        "mul_add": (
            (f"Compute ({x}*{y})+{z}", f"What is {x} * {y} + {z}?", f"Multiply {x} by {y}, then add {z}."),
            (f"计算 ({x}*{y})+{z}", f"先算{x}乘{y}，再加{z}"),
        ),
        "add_add": (
            (f"Compute {x}+{y}+{z}", f"Add {x}, {y} and {z}.", f"What is {x} + {y} + {z}?"),
            (f"计算 {x}+{y}+{z}", f"把{x}、{y}和{z}加起来"),
        ),
        "add": (
            (f"Compute {x}+{y}", f"What is {x} plus {y}?", f"Add {x} and {y}."),
            (f"计算 {x}+{y}", f"{x}加{y}等于多少？"),
        ),
        "mul": (
            (f"Compute {x}*{y}", f"What is {x} times {y}?", f"Multiply {x} and {y}."),
            (f"计算 {x}*{y}", f"{x}乘{y}等于多少？"),
        ),
    }
    return r.choice(forms[pattern][1 if zh else 0])


def _arith_thought(op: str, a: int, b: int, zh: bool) -> str:
    if zh:
        return f"先计算 {a}{'+' if op == 'add' else '*'}{b}。"
    return f"I will {'add' if op == 'add' else 'multiply'} {a} and {b}."


def _arith_reason(steps: list[tuple], stage: int, fns: dict[str, Function], zh: bool) -> str:
    sym = {"add": "+", "mul": "*"}
    done = "".join(f"{a}{sym[op]}{b}={res}. " for op, a, b, res in steps[:stage])
    if stage == len(steps):
        return done + (f"最终结果是 {steps[-1][3]}。" if zh else f"The final answer is {steps[-1][3]}.")
    op, a, b, _ = steps[stage]
    if zh:
        return done + f"下一步用 {fns[op].name} 计算 {a}{sym[op]}{b}。"
    return done + f"Next I compute {a}{sym[op]}{b} with {fns[op].name}."


FAMILIES: dict[str, float] = {"tool": 48, "arith": 22, "chat": 23, "chat_tools": 7}


def generate(n: int, seed: int, split: str = "train", families: dict[str, float] | None = None) -> list[Example]:
    """`n` examples drawn from the family mix (`FAMILIES` unless given); the same arguments give the same list
    everywhere."""
    b = _Builder(random.Random(seed), split)
    mix = families or FAMILIES
    if set(mix) - set(FAMILIES):
        raise ValueError(f"unknown corpus families {sorted(set(mix) - set(FAMILIES))}; known: {list(FAMILIES)}")
    names, weights = list(mix), list(mix.values())
    out = []
    for _ in range(n):
        family = b.rng.choices(names, weights=weights)[0]
        if family == "tool":
            out.append(b.tool_call())
        elif family == "arith":
            out.append(b.arithmetic())
        else:
            out.append(b.chat(with_tools=family == "chat_tools"))
    return out


def heldout_tool_calls(n: int, fmt: str, seed: int = 1234, enable_thinking: bool | None = None) -> list[Example]:
    """`n` first-turn tool calls whose function names, argument names and numbers never occur in training;
    thinking as in training (mixed) unless `enable_thinking` is given (None: mixed, not "not sent")."""
    b = _Builder(random.Random(f"{seed}-{fmt}"), "heldout")
    out = [b.tool_call(fmt, stage="call") for _ in range(n)]
    if enable_thinking is not None:
        for ex in out:
            ex.enable_thinking = enable_thinking
    return out


def heldout_chains(n: int, fmt: str = "intern-s1", seed: int = 4321) -> list[Example]:
    """`n` first turns of (x+y)*z through add then mul, with held-out numbers."""
    b = _Builder(random.Random(f"{seed}-{fmt}-chain"), "heldout")
    return [b.arithmetic(fmt, pattern="add_mul", stage=0, seed_tools=True) for _ in range(n)]
