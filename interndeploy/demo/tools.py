"""Made-up functions for the demo corpus: their OpenAI tool schemas, questions that call them, and answers.

A `Function` is a schema plus how people talk about it: `phrase` is what a question calls the function
("ticket price" for `get_ticket_price`), each `Param.phrase` what it calls the argument. A question always
names the function's phrase and, for each argument it sets, the argument's phrase next to its value, so the
model learns to match the question against the tools block and to copy names and values, not to remember them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from interndeploy.demo.words import UNITS, WEATHER_WORDS, Lexicon

INT_TYPES = ("integer", "integer", "integer", "int", "number")
FLOAT_TYPES = ("number", "number", "float")


@dataclass
class Param:
    name: str  # the schema's property name
    phrase: str  # how a question names it
    type: str  # the schema's type text ("integer", "int", "number", "float", "string")
    kind: str  # what values look like: int | float | string | date | city | unit | enum
    description: str
    required: bool = True
    enum: list[str] | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.enum:
            out = {"type": self.type, "enum": list(self.enum), "description": self.description}
        return out


@dataclass
class Function:
    name: str
    phrase: str  # how a question names what the function does ("ticket price")
    verb: str  # a verb for questions ("get")
    description: str
    params: list[Param] = field(default_factory=list)

    def tool(self) -> dict[str, Any]:
        """The OpenAI tool object (`{"type": "function", "function": {...}}`)."""
        props = {p.name: p.schema() for p in self.params}
        required = [p.name for p in self.params if p.required]
        parameters = {"type": "object", "properties": props, "required": required}
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": parameters},
        }


def _join_name(words: list[str], style: str) -> str:
    if style == "camel":
        return words[0] + "".join(w.capitalize() for w in words[1:])
    return "_".join(words)


def _value(lex: Lexicon, p: Param) -> Any:
    r = lex.rng
    if p.kind == "int":
        return lex.integer()
    if p.kind == "float":
        return lex.decimal()
    if p.kind == "date":
        return lex.date()
    if p.kind == "city":
        return lex.city()
    if p.enum:
        return r.choice(p.enum)
    return lex.string_value()


def make_param(lex: Lexicon, taken: set[str], date_taken: bool = False) -> Param:
    """A parameter with a fresh name of this split (a date only if the function has none yet: questions may
    say "on 2024-11-14" without naming the parameter)."""
    r = lex.rng
    while True:
        words = lex.words(r.choice((1, 1, 2, 2, 2, 3)))
        style = "camel" if len(words) > 1 and r.random() < 0.06 else "snake"
        name = _join_name(words, style)
        if name not in taken:
            break
    phrase = " ".join(words)
    kind = r.choices(("int", "float", "string", "enum", "date"), weights=(40, 12, 35, 8, 0 if date_taken else 5))[0]
    if kind == "int":
        ptype, desc = r.choice(INT_TYPES), r.choice((f"The {phrase}.", f"The {phrase} as a whole number.", "A number"))
    elif kind == "float":
        ptype, desc = r.choice(FLOAT_TYPES), r.choice((f"The {phrase}.", f"The {phrase}, may have decimals."))
    elif kind == "date":
        ptype, desc = "string", f"The {phrase}, in the format 'Year-Month-Day'."
    else:
        ptype, desc = "string", r.choice((f"The {phrase}.", f"Name of the {phrase}.", f"The {phrase} to use."))
    enum = None
    if kind == "enum":
        enum = [lex.word(0.3) for _ in range(r.randint(2, 4))]
        enum = list(dict.fromkeys(enum))
        desc = f"The {phrase}, one of {', '.join(enum)}."
    return Param(name, phrase, ptype, kind, desc, enum=enum)


def make_function(lex: Lexicon, taken: set[str]) -> Function:
    """A function with a fresh name of this split and 1-3 parameters (the last may be optional)."""
    r = lex.rng
    while True:
        nouns = lex.words(r.choice((1, 1, 2, 2, 2, 3)))
        verb = lex.verb()
        shape = r.random()
        if shape < 0.55:
            words = [verb, *nouns]
        elif shape < 0.7 and lex.adjectives:
            words = [verb, r.choice(lex.adjectives), *nouns]
        else:
            words = nouns
        style = "camel" if len(words) > 1 and r.random() < 0.06 else "snake"
        name = _join_name(words, style)
        if name not in taken:
            break
    phrase = " ".join(words[1:] if words[0] == verb else words)
    desc = r.choice(
        (
            f"{verb.capitalize()} the {phrase}.",
            f"Returns the {phrase}.",
            f"{verb.capitalize()} {phrase} data.",
            f"Look up the {phrase} for the given inputs.",
            f"查询{phrase}。",
        )
    )
    n = r.choices((1, 2, 3), weights=(35, 45, 20))[0]
    params: list[Param] = []
    used: set[str] = set()
    for _ in range(n):
        p = make_param(lex, used, any(q.kind == "date" for q in params))
        used.add(p.name)
        params.append(p)
    if n > 1 and r.random() < 0.3:
        params[-1].required = False
    return Function(name, phrase, verb, desc, params)


# ---------------------------------------------------------------- the seeds' kinds of tools


def weather_functions(lex: Lexicon) -> list[Function]:
    """get_current_temperature / get_temperature_date as in the Intern-S1 cards, with variations."""
    r = lex.rng
    what = r.choice(WEATHER_WORDS) if r.random() < 0.4 else "temperature"
    key = what.replace(" ", "_")
    loc_name = r.choice(("location", "location", "city", "place"))
    loc_desc = r.choice(
        (
            "The location to get the temperature for, in the format 'City, State, Country'.",
            f"The {loc_name} to look up.",
        )
    )
    unit = Param(
        "unit",
        "unit",
        "string",
        "unit",
        "The unit to return the temperature in. Defaults to 'celsius'.",
        required=False,
        enum=["celsius", "fahrenheit"],
    )
    loc = Param(loc_name, loc_name, "string", "city", loc_desc)
    date = Param(
        "date", "date", "string", "date", "The date to get the temperature for, in the format 'Year-Month-Day'."
    )
    now = Function(
        f"get_current_{key}",
        f"current {what}",
        "get",
        f"Get current {what} at a location.",
        [loc, unit] if key == "temperature" or r.random() < 0.5 else [loc],
    )
    dated = Function(
        f"get_{key}_date",
        f"{what} on a date",
        "get",
        f"Get {what} at a location and date.",
        [loc, date, unit] if key == "temperature" or r.random() < 0.5 else [loc, date],
    )
    return [now, dated]


def arithmetic_functions(rng: random.Random, seed_like: bool | None = None) -> dict[str, Function]:
    """add and mul as in seed 004 (names, argument names and types sometimes varied), plus distractors."""
    seed_like = rng.random() < 0.6 if seed_like is None else seed_like
    names = {"add": "add", "mul": "mul", "sub": "sub", "div": "div"}
    if not seed_like:
        names = rng.choice(
            (
                {"add": "add", "mul": "multiply", "sub": "subtract", "div": "divide"},
                {"add": "plus", "mul": "times", "sub": "minus", "div": "divided_by"},
                {"add": "sum_two", "mul": "product", "sub": "difference", "div": "quotient"},
                {"add": "add_numbers", "mul": "multiply_numbers", "sub": "subtract_numbers", "div": "divide_numbers"},
                {"add": "add", "mul": "mul", "sub": "sub", "div": "div"},
            )
        )
    a, b = (
        ("a", "b")
        if seed_like or rng.random() < 0.5
        else rng.choice((("x", "y"), ("num1", "num2"), ("first", "second"), ("left", "right")))
    )
    ptype = "int" if seed_like else rng.choice(("int", "integer", "number"))
    descs = {
        "add": ("Compute the sum of two numbers", "Add two numbers", "Return a + b"),
        "mul": ("Calculate the product of two numbers", "Multiply two numbers", "Return a * b"),
        "sub": ("Subtract the second number from the first", "Return a - b"),
        "div": ("Divide the first number by the second", "Return a / b"),
    }
    out = {}
    for op, name in names.items():
        desc = descs[op][0] if seed_like else rng.choice(descs[op])
        params = [Param(a, a, ptype, "int", "A number"), Param(b, b, ptype, "int", "A number")]
        out[op] = Function(name, op, op, desc, params)
    return out


# ---------------------------------------------------------------- questions


def _mention(p: Param, value: Any, rng: random.Random, zh: bool) -> str:
    """How a question states one argument."""
    v = value if not isinstance(value, str) or rng.random() > 0.12 else rng.choice(("'{}'", '"{}"')).format(value)
    if zh:
        return rng.choice((f"{p.phrase}为{v}", f"{p.phrase}是 {v}", f"{p.phrase}：{v}", f"{p.phrase} = {v}"))
    if p.kind == "city" and rng.random() < 0.6:
        return f"in {v}"
    if p.kind == "date" and rng.random() < 0.5:
        return f"on {v}"
    if p.kind == "unit" and rng.random() < 0.6:
        return f"in {v}"
    forms = (
        f"{p.phrase} {v}",
        f"{p.phrase} = {v}",
        f"{p.phrase}: {v}",
        f"{p.phrase} of {v}",
        f"{p.phrase} set to {v}",
        f"{p.name}={v}",
        f"the {p.phrase} {v}",
        f"{p.phrase} is {v}",
    )
    return rng.choice(forms)


def question(fn: Function, args: dict[str, Any], rng: random.Random, zh: bool) -> str:
    """A user question asking for `fn` with exactly `args` (in the schema's order)."""
    by_name = {p.name: p for p in fn.params}
    parts = [_mention(by_name[k], v, rng, zh) for k, v in args.items()]
    if rng.random() < 0.3:
        rng.shuffle(parts)
    if zh:
        spec = "，".join(parts)
        return rng.choice(
            (
                f"请帮我查询{fn.phrase}，{spec}。",
                f"{fn.phrase}是多少？{spec}",
                f"帮我{fn.verb}一下{fn.phrase}，{spec}。",
                f"用 {fn.name} 工具：{spec}。",
                f"我想知道{fn.phrase}（{spec}）。",
            )
        )
    spec = rng.choice((", ", " and ", "; ")).join(parts) if len(parts) > 1 else (parts[0] if parts else "")
    forms = [
        f"What is the {fn.phrase} for {spec}?",
        f"Please {fn.verb} the {fn.phrase} with {spec}.",
        f"Can you {fn.verb} the {fn.phrase}? Use {spec}.",
        f"I need the {fn.phrase}: {spec}.",
        f"{fn.verb.capitalize()} {fn.phrase} where {spec}.",
        f"Use the {fn.name} tool with {spec}.",
        f"{fn.phrase} for {spec}, please",
        f"Could you look up the {fn.phrase}, {spec}?",
    ]
    if not parts:
        forms = [f"What is the {fn.phrase}?", f"Please {fn.verb} the {fn.phrase}.", f"Use the {fn.name} tool."]
    return rng.choice(forms)


def weather_question(fn: Function, args: dict[str, Any], lex: Lexicon, zh: bool) -> str:
    r = lex.rng
    what = fn.phrase.replace("current ", "").replace(" on a date", "")
    loc = next(v for k, v in args.items() if k in ("location", "city", "place"))
    unit = f" in {args['unit']}" if "unit" in args else ""
    if "date" in args:
        d = args["date"]
        if zh:
            return r.choice((f"{loc}在{d}的{what}是多少？", f"查一下 {d} {loc} 的{what}{unit}。"))
        return r.choice(
            (
                f"What will the {what} be in {loc} on {d}{unit}?",
                f"What was the {what} in {loc} on {d}?",
                f"Tell me the {what} for {loc} on {d}{unit}.",
                f"{what} in {loc}, date {d}{unit}?",
            )
        )
    if zh:
        return r.choice((f"{loc}现在的{what}是多少？", f"查一下{loc}的当前{what}。"))
    today = f"Today is {lex.date()}, " if r.random() < 0.3 else ""
    tail = " How about tomorrow?" if today and r.random() < 0.5 else ""
    return today + r.choice(
        (
            f"What's the {what} in {loc} now{unit}?{tail}",
            f"what is the current {what} in {loc}?",
            f"How is the {what} in {loc} right now{unit}?",
            f"Current {what} in {loc}{unit}, please.",
        )
    )


def call_args(fn: Function, lex: Lexicon) -> dict[str, Any]:
    """Values for every required parameter and, half of the time, the optional ones (schema order)."""
    return {p.name: _value(lex, p) for p in fn.params if p.required or lex.rng.random() < 0.5}


def result_for(fn: Function, args: dict[str, Any], lex: Lexicon) -> dict[str, Any]:
    """What the tool returns: a small JSON object that the answer will quote."""
    r = lex.rng
    if "temperature" in fn.name or any(w.replace(" ", "_") in fn.name for w in WEATHER_WORDS):
        key = fn.phrase.split()[-1] if "date" not in fn.name else fn.phrase.split()[0]
        out: dict[str, Any] = {key: lex.reading(-15, 38)}
        out.update({k: v for k, v in args.items()})
        return out
    key = fn.phrase.split()[-1] if r.random() < 0.5 else r.choice(("result", "value", "answer", "output"))
    key = "result" if key in ("status", "unit") else key
    value = r.choice((lex.integer(), lex.decimal(), lex.string_value()))
    out = {key: value}
    if r.random() < 0.3:
        out["status"] = r.choice(("ok", "success", "done"))
    if r.random() < 0.2:
        out["unit"] = r.choice(UNITS)
    return out


def answer_for(fn: Function, result: dict[str, Any], zh: bool, rng: random.Random) -> str:
    """The final answer quoting the tool result."""
    items = [(k, v) for k, v in result.items() if k != "status"]
    place = next((result[k] for k in ("location", "city", "place") if k in result), None)
    if place is not None:  # a weather reading
        key, value = items[0]
        unit = f" {result['unit']}" if "unit" in result else ""
        when = f" on {result['date']}" if "date" in result else ""
        if zh:
            return f"{place}{'在' + result['date'] if 'date' in result else ''}的{key}是 {value}{unit}。"
        return f"The {key} in {place}{when} is {value}{unit}."
    if zh:
        return f"查询结果：{'，'.join(f'{k}为{v}' for k, v in items)}。"
    first_key, first_value = items[0]
    rest = ", ".join(f"{k} is {v}" for k, v in items[1:])
    if len(items) == 1:
        return rng.choice(
            (
                f"The {fn.phrase} is {first_value}.",
                f"The result is {first_value}.",
                f"{fn.name} returned {first_key} = {first_value}.",
            )
        )
    return rng.choice(
        (f"The {first_key} is {first_value} ({rest}).", f"Here is the result: {first_key} is {first_value}, {rest}.")
    )


def tool_result_text(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False)
