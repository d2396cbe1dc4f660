"""POST /v1/chat/completions: messages -> prompt ids -> engine -> a chat.completion or an SSE stream of chunks.

`enable_thinking` may come at the top level (LMDeploy <= 0.10) or in `chat_template_kwargs` (vLLM, SGLang,
LMDeploy >= 0.11); when both are set, `chat_template_kwargs` wins, as in LMDeploy. `tool_choice` "none" hides the
tools from the template and turns tool parsing off; a named function offers only that tool; "required" offers all
(it is not enforced by a grammar: the model may still answer in text).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from ...engine.request import RequestOutput
from ...vl.media import MediaError
from ...vl.prompt import MEDIA_PARTS, has_media
from .chat_output import ChoiceDelta, ChoiceStream, OutputPlan, finish_reason, parse_reply
from .errors import APIError, error_body
from .generation import check_length, gen_config
from .logprobs import TokenTexts
from .protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    NamedToolChoice,
    PromptTokensDetails,
    ResponseFunctionCall,
    ResponseMessage,
    ResponseToolCall,
    Usage,
)
from .state import ServerState
from .streaming import GENERATION_RESPONSES, SSE_DONE, primed, sse, sse_response, unless_disconnected

router = APIRouter()

# chat_template_kwargs keys that are the server's to set
_RESERVED_KWARGS = ("messages", "prompt", "tools", "bos_token", "eos_token", "do_preprocess")


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=GENERATION_RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state: ServerState = request.app.state.server
    state.check_model(body.model)
    body.check()
    state.check_n(body.n)
    engine = state.engine
    vision = getattr(engine, "vision", None) is not None  # a vision-language model: images and videos accepted
    messages, tools, enable_thinking, kwargs = template_inputs(body, MEDIA_PARTS if vision else ())
    multimodal = None
    try:  # in a worker thread: a long prompt takes seconds to tokenize and the event loop must not wait on it
        if vision and has_media(messages):  # fetch, decode and tile the media (vl/), then tokenize around them
            prompt_ids, multimodal = await engine.encode_chat(messages, state.settings.media_policy, tools=tools,
                                                              enable_thinking=enable_thinking, **kwargs)
        else:
            prompt_ids = await run_in_threadpool(engine.encode_prompt, messages, tools=tools,
                                                 enable_thinking=enable_thinking, **kwargs)
    except MediaError as e:  # corrupt or unsupported media, a URL the policy refuses, too many frames
        raise APIError(str(e), param=e.param or "messages", code="invalid_media") from None
    except ValueError as e:  # ChatTemplateError: unknown role, unsupported content part, template failure
        raise APIError(str(e), param="messages") from None
    length_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_new = check_length(len(prompt_ids), body.max_new_tokens, engine.session_len, length_param)
    plan = OutputPlan.choose(
        family=engine.chat_template.family,
        thinking=engine.chat_template.thinking_enabled(enable_thinking),
        has_tools=tools is not None,
        reasoning_parser=state.settings.reasoning_parser,
        tool_call_parser=state.settings.tool_call_parser,
        skip_special_tokens=body.skip_special_tokens,
        special_tokens=state.special_tokens,
    )
    gen = gen_config(
        body,
        state.defaults,
        max_new_tokens=max_new,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        vocab_size=engine.tokenizer.vocab_size,
        skip_special_tokens=False if plan.decode_special_tokens else None,
    )
    responder = ChatResponder(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        model=state.model_name,
        plan=plan,
        n=body.n,
        token_texts=state.token_texts if body.logprobs else None,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    state.log_prompt(responder.request_id, messages, gen)
    outputs = state.generate(prompt_ids, gen, responder.request_id, body.session_id, multimodal)
    if body.stream:
        return sse_response(responder.chunks(await unless_disconnected(primed(outputs), request)))
    return JSONResponse(await unless_disconnected(responder.collect(outputs), request))


def template_inputs(
    body: ChatCompletionRequest, media_parts: tuple[str, ...] = ()
) -> tuple[list[dict], list[dict] | None, bool | None, dict]:
    """(messages, tools, enable_thinking, other chat_template_kwargs) for the chat template; content parts of the
    `media_parts` types pass (a vision-language model's)."""
    check_text_only(body, media_parts)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    tools = None
    if body.tools and body.tool_choice != "none":
        offered = body.tools
        if isinstance(body.tool_choice, NamedToolChoice):
            offered = [t for t in offered if t.function.name == body.tool_choice.function.name]
        tools = [t.model_dump(exclude_none=True) for t in offered]
    kwargs = dict(body.chat_template_kwargs or {})
    for key in _RESERVED_KWARGS:
        if key in kwargs:
            raise APIError(f"chat_template_kwargs cannot set {key!r}", param=f"chat_template_kwargs.{key}")
    enable_thinking = kwargs.pop("enable_thinking", None)
    if not isinstance(enable_thinking, bool | None):
        raise APIError("chat_template_kwargs.enable_thinking must be true or false",
                       param="chat_template_kwargs.enable_thinking")
    if enable_thinking is None:
        enable_thinking = body.enable_thinking
    return messages, tools, enable_thinking, kwargs


def check_text_only(body: ChatCompletionRequest, media_parts: tuple[str, ...] = ()) -> None:
    """400 for content parts other than text (and `media_parts`, for a vision-language model): a text-only model
    takes no image, audio or video input, and its server fetches no media."""
    for i, message in enumerate(body.messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            kind = part.get("type", "text")
            if kind in media_parts:
                continue
            if kind != "text":
                raise APIError(f"{kind!r} content parts are not supported: {body.model or 'this model'} is served "
                               "as a text-only model; send text parts only", param=f"messages[{i}].content[{j}]",
                               code="unsupported_content")
            if not isinstance(part.get("text"), str):
                raise APIError("a text content part needs a string `text`", param=f"messages[{i}].content[{j}].text")


@dataclass
class ChatResponder:
    """Builds the response of one chat request from its engine outputs (all n samples, interleaved)."""

    request_id: str
    model: str
    plan: OutputPlan
    n: int = 1
    token_texts: TokenTexts | None = None  # set when logprobs were asked for
    include_usage: bool = False  # stream_options.include_usage
    created: int = field(default_factory=lambda: int(time.time()))

    async def collect(self, outputs: AsyncIterator[RequestOutput]) -> dict[str, Any]:
        texts: list[list[str]] = [[] for _ in range(self.n)]
        logprobs: list[list[dict]] = [[] for _ in range(self.n)]
        reasons: list[str | None] = [None] * self.n
        usage = _UsageCounter(self.n)
        async for out in outputs:
            texts[out.index].append(out.text)
            if self.token_texts is not None and out.logprobs:
                logprobs[out.index] += self.token_texts.chat_content(out.token_ids, out.logprobs)
            usage.add(out)
            if out.finished:
                reasons[out.index] = out.finish_reason
        choices = []
        for i in range(self.n):
            reply = parse_reply(self.plan, "".join(texts[i]))
            calls = [ResponseToolCall(id=c.id, function=ResponseFunctionCall(name=c.name, arguments=c.arguments))
                     for c in reply.calls]
            message = ResponseMessage(content=reply.content, reasoning_content=reply.reasoning,
                                      tool_calls=calls or None)
            choices.append(ChatChoice(
                index=i,
                message=message,
                logprobs={"content": logprobs[i]} if self.token_texts is not None else None,
                finish_reason=finish_reason(reasons[i], bool(calls)),
            ))
        response = ChatCompletionResponse(
            id=self.request_id, created=self.created, model=self.model, choices=choices, usage=usage.usage()
        ).model_dump()
        for choice in response["choices"]:
            message = choice["message"]
            if message["tool_calls"] is None:
                del message["tool_calls"]
            if self.plan.reasoning is None:
                del message["reasoning_content"]
        return response

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        chunk = {"id": self.request_id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "choices": choices}
        if self.include_usage:
            chunk["usage"] = usage
        return sse(chunk)

    async def chunks(self, outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[str]:
        """SSE events: a role delta per choice, text / reasoning / tool-call deltas, finish reasons, optionally the
        usage, then [DONE]. An engine failure mid-stream is sent as an error event before [DONE]."""
        streams = [ChoiceStream(self.plan) for _ in range(self.n)]
        usage = _UsageCounter(self.n)
        for i in range(self.n):
            yield self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}])
        try:
            async for out in outputs:
                usage.add(out)
                stream = streams[out.index]
                delta = stream.feed(out.text)
                if out.finished:
                    tail = stream.finish()
                    delta = ChoiceDelta(delta.reasoning + tail.reasoning, delta.content + tail.content,
                                        delta.calls + tail.calls)
                logprobs = None
                if self.token_texts is not None and out.logprobs:
                    logprobs = {"content": self.token_texts.chat_content(out.token_ids, out.logprobs)}
                reason = finish_reason(out.finish_reason, stream.made_calls) if out.finished else None
                for choice in _delta_choices(out.index, delta, logprobs, reason):
                    yield self._chunk([choice])
            if self.include_usage:
                yield self._chunk([], usage.usage().model_dump())
        except APIError as e:
            yield sse(error_body(e.message, e.status, e.param, e.code))
        yield SSE_DONE


def _delta_choices(
    index: int, delta: ChoiceDelta, logprobs: dict | None, reason: str | None
) -> list[dict[str, Any]]:
    """One step of a choice as OpenAI deltas: text first, then per call its id and name, then its arguments."""
    deltas: list[dict[str, Any]] = []
    text: dict[str, Any] = {}
    if delta.reasoning:
        text["reasoning_content"] = delta.reasoning
    if delta.content:
        text["content"] = delta.content
    if text:
        deltas.append(text)
    for call in delta.calls:
        head = {"index": call.index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        deltas.append({"tool_calls": [{"index": call.index, "function": {"arguments": call.arguments}}]})
    if not deltas and (logprobs or reason):
        deltas.append({})
    choices = [{"index": index, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas]
    if choices:
        choices[0]["logprobs"] = logprobs
        choices[-1]["finish_reason"] = reason
    return choices


class _UsageCounter:
    def __init__(self, n: int) -> None:
        self.prompt = 0
        self.cached = 0
        self.outputs = [0] * n  # cumulative output tokens per sample

    def add(self, out: RequestOutput) -> None:
        self.prompt = out.num_prompt_tokens
        self.cached = max(self.cached, out.num_cached_tokens)
        self.outputs[out.index] = out.num_output_tokens

    def usage(self) -> Usage:
        completion = sum(self.outputs)
        return Usage(prompt_tokens=self.prompt, completion_tokens=completion, total_tokens=self.prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached))
