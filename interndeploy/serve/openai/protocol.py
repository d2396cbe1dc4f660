"""Request and response bodies of the OpenAI-compatible server (OpenAI fields plus LMDeploy's extras).

Requests accept what the `openai` client sends and what LMDeploy users add, at the top level or inside a literal
`extra_body` object. Unknown fields are kept (`extra="allow"`) and ignored: clients echo back assistant messages with
`refusal`, `annotations`, `audio`, `function_call`... Field checks raise pydantic errors, which the server turns
into 400s whose `param` names the field (errors.validation_error); checks across fields are the requests'
`check()` methods, raising APIError with the param.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import APIError

MAX_N = 128  # default --max-n: more samples per request would let one request fill the batch many times over
MAX_SCHEMA_DEPTH = 32  # nesting of a tool's parameters schema (deeper is refused, not recursed into)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


def _merge_extra_body(data: Any) -> Any:
    """Raw-HTTP clients sometimes send the openai client's `extra_body` literally; its keys count as top-level
    fields unless the top level sets them too."""
    if isinstance(data, dict) and isinstance(data.get("extra_body"), dict):
        data = dict(data)
        for key, value in data.pop("extra_body").items():
            data.setdefault(key, value)
    return data


# ---------------------------------------------------------------- messages and tools


class FunctionCall(_Open):
    name: str
    arguments: str | dict[str, Any] | None = None


class ToolCall(_Open):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "environment"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


def schema_problem(schema: Any, where: str = "parameters", depth: int = 0) -> str | None:
    """What makes a tool's JSON schema structurally unusable, or None.

    Structure only: keywords of the wrong JSON type, a `pattern` that is not a regular expression, nesting deeper
    than MAX_SCHEMA_DEPTH. Unknown type names pass (seed 004 writes "type": "int"); the schema only reaches the
    chat template, never a grammar compiler.
    """
    if not isinstance(schema, dict):
        return f"{where} must be a JSON schema object, got {type(schema).__name__}"
    if depth > MAX_SCHEMA_DEPTH:
        return f"{where} nests deeper than {MAX_SCHEMA_DEPTH} levels"
    kind = schema.get("type")
    if kind is not None and not (isinstance(kind, str) or (isinstance(kind, list) and all(isinstance(k, str)
                                                                                          for k in kind))):
        return f"{where}.type must be a type name or a list of type names"
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        return f"{where}.required must be a list of property names"
    if "enum" in schema and not isinstance(schema["enum"], list):
        return f"{where}.enum must be a list"
    pattern = schema.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            return f"{where}.pattern must be a string"
        try:
            re.compile(pattern)
        except re.error as e:
            return f"{where}.pattern is not a regular expression: {e}"
    children: list[tuple[str, Any]] = []
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        if key in schema:
            if not isinstance(schema[key], dict):
                return f"{where}.{key} must be an object of schemas"
            children += [(f"{where}.{key}.{name}", sub) for name, sub in schema[key].items()]
    for key in ("items", "additionalProperties", "not"):
        sub = schema.get(key)
        if isinstance(sub, list) and key == "items":  # draft-4 tuple form
            children += [(f"{where}.items[{i}]", s) for i, s in enumerate(sub)]
        elif sub is not None and not isinstance(sub, bool):
            children.append((f"{where}.{key}", sub))
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            if not isinstance(schema[key], list):
                return f"{where}.{key} must be a list of schemas"
            children += [(f"{where}.{key}[{i}]", s) for i, s in enumerate(schema[key])]
    for path, sub in children:
        problem = schema_problem(sub, path, depth + 1)
        if problem:
            return problem
    return None


class FunctionDefinition(_Open):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON schema, checked for structure only (schema_problem)
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _usable_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = None if value is None else schema_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"] = "function"
    function: NamedFunction


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema", "regex_schema"]
    json_schema: dict[str, Any] | None = None  # {"name", "schema", "strict"}; compiled by the engine
    regex_schema: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ResponseFormat:
        if self.type == "json_schema" and not self.json_schema:
            raise ValueError("type json_schema needs a json_schema object with a schema")
        if self.type == "regex_schema" and not self.regex_schema:
            raise ValueError("type regex_schema needs a regex_schema string")
        return self

    def engine_dict(self) -> dict[str, Any] | None:
        """The dict GenerationConfig.response_format takes; None for plain text."""
        if self.type == "text":
            return None
        return self.model_dump(exclude_none=True)


class StreamOptions(_Open):
    include_usage: bool = False


# ---------------------------------------------------------------- requests


class SamplingRequest(_Open):
    """Fields shared by chat and text completions."""

    model: str | None = None  # None: the served model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)  # at most --max-n (ServerState.check_n)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # LMDeploy extras
    top_k: int | None = Field(None, ge=-1)  # 0 or -1: off
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    min_new_tokens: int | None = Field(None, ge=0)
    session_id: int = -1
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False

    _merge = model_validator(mode="before")(_merge_extra_body)

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported by this server; leave it out")
        return value

    @property
    def stop_words(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    enable_thinking: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _string_prompt(cls, value: Any) -> Any:
        return [{"role": "user", "content": value}] if isinstance(value, str) else value

    def check(self) -> None:
        """Checks across fields (pydantic would report them without a param)."""
        if "chat_template" in (self.model_extra or {}):  # Jinja from a client could exhaust CPU and memory
            raise APIError("chat_template cannot be set per request; start the server with --chat-template",
                           param="chat_template")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError("top_logprobs needs logprobs set to true", param="top_logprobs")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) or choice == "required":
            if not self.tools:
                what = choice if isinstance(choice, str) else "naming a function"
                raise APIError(f"tool_choice {what} needs tools", param="tool_choice")
            if isinstance(choice, NamedToolChoice) and choice.function.name not in self.tool_names:
                raise APIError(f"tool_choice names function {choice.function.name!r}, which is not in tools",
                               param="tool_choice")

    @property
    def tool_names(self) -> list[str]:
        return [t.function.name for t in self.tools or []]

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


Prompt = str | list[int]


class CompletionRequest(SamplingRequest):
    prompt: list[Prompt]  # normalized: one entry per prompt, each a string or token ids
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value: Any) -> list[Prompt]:
        def is_ids(x: Any) -> bool:
            return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

        if isinstance(value, str):
            value = [value]
        elif is_ids(value):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(p, str) or is_ids(p) for p in value):
            raise ValueError("prompt must be a string, a list of strings, a list of token ids or a list of lists "
                             "of token ids (none empty)")
        return value

    def check(self) -> None:
        if self.suffix:
            raise APIError("suffix is not supported by this server", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise APIError("best_of other than n is not supported by this server", param="best_of")
        if self.echo and self.logprobs is not None:
            raise APIError("echo with logprobs would need prompt logprobs, which this server does not compute",
                           param="echo")

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens


class EncodeRequest(_Open):
    """LMDeploy's /v1/encode: token ids of text, with or without the chat template."""

    input: str | list[str]
    do_preprocess: bool = False
    add_bos: bool = True


class AbortRequest(_Open):
    """LMDeploy's /abort_request (session_id or abort_all), plus a response `id` as request_id."""

    session_id: int = -1
    abort_all: bool = False
    request_id: str | None = None


# ---------------------------------------------------------------- responses


class ErrorInfo(BaseModel):
    message: str  # what was wrong and what to do
    type: str  # invalid_request_error | rate_limit_error | server_error
    param: str | None = None  # the request field at fault, e.g. messages[0].role
    code: str | None = None  # machine-readable: context_length_exceeded, server_busy, queue_full...


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "interndeploy"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ResponseToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: dict[str, Any] | None = None  # {"content": [{token, logprob, bytes, top_logprobs}]}
    finish_reason: str | None = None  # stop | length | tool_calls | abort


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None  # {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class EncodeResponse(BaseModel):
    input_ids: list[int] | list[list[int]]
    length: int | list[int]
