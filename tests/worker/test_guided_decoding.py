"""response_format through the engine: the output is forced into the grammar (llguidance)."""

from __future__ import annotations

import json
import re

import pytest

from interndeploy import GenerationConfig
from interndeploy.config import ConfigError

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


def gen(fmt: dict, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=64, response_format=fmt, **kw)


def test_json_schema_output_parses_and_conforms(internlm2_pipe):
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}}
    outs = internlm2_pipe(["plan a trip", "another one", "和一个中文的"], gen_config=gen(fmt))
    for out in outs:
        obj = json.loads(out.text)
        assert set(obj) == {"city", "days"} and isinstance(obj["days"], int) and isinstance(obj["city"], str)
        assert out.finish_reason == "stop"


def test_json_object_sampled_with_n(internlm2_pipe):
    g = gen({"type": "json_object"}, n=2, do_sample=True, temperature=1.0, random_seed=7)
    for out in internlm2_pipe("give me json", gen_config=g):
        if out.finish_reason == "stop":
            assert isinstance(json.loads(out.text), dict)


def test_regex_schema(internlm2_pipe):
    out = internlm2_pipe("a date", gen_config=gen({"type": "regex_schema", "regex_schema": r"20[0-9]{2}-[01][0-9]"}))
    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]", out.text)


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}},
        {"type": "json_schema", "json_schema": "nope"},
        {"type": "xml"},
        {"type": "regex_schema", "regex_schema": "("},
    ],
)
def test_uncompilable_format_is_a_clear_error(internlm2_pipe, fmt):
    with pytest.raises(ConfigError, match="response_format"):
        internlm2_pipe("x", gen_config=gen(fmt))
    assert internlm2_pipe("still fine", gen_config=GenerationConfig(max_new_tokens=2)).generate_token_len == 2
