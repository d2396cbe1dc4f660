"""POST /v1/completions (raw text in, no chat template) and LMDeploy's POST /v1/encode (text -> token ids).

Several prompts run concurrently; choice `index` is prompt_index * n + sample_index, as OpenAI numbers them.
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
from .errors import APIError, error_body
from .generation import check_length, gen_config
from .logprobs import TokenTexts, extend_completion_logprobs
from .protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EncodeRequest,
    EncodeResponse,
    PromptTokensDetails,
    Usage,
)
from .state import ServerState
from .streaming import GENERATION_RESPONSES, SSE_DONE, merge, primed, sse, sse_response, unless_disconnected

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse, responses=GENERATION_RESPONSES)
async def completions(body: CompletionRequest, request: Request) -> Response:
    state: ServerState = request.app.state.server
    state.check_model(body.model)
    body.check()
    state.check_n(body.n * len(body.prompt), "n" if len(body.prompt) == 1 else "prompt")
    engine = state.engine
    vocab = engine.tokenizer.vocab_size
    for i, prompt in enumerate(body.prompt):
        if not isinstance(prompt, str) and not all(0 <= t < vocab for t in prompt):
            raise APIError(f"prompt {i} has token ids outside the vocabulary (size {vocab})", param="prompt")

    def tokenize() -> list[list[int]]:
        return [engine.encode_prompt(p, do_preprocess=False) if isinstance(p, str) else list(p) for p in body.prompt]

    prompt_ids = await run_in_threadpool(tokenize)  # off the event loop: long prompts take seconds
    gens = [
        gen_config(
            body,
            state.defaults,
            max_new_tokens=check_length(len(ids), body.max_tokens, engine.session_len),
            logprobs=body.logprobs,
            vocab_size=vocab,
        )
        for ids in prompt_ids
    ]
    responder = CompletionResponder(
        request_id=f"cmpl-{uuid.uuid4().hex}",
        model=state.model_name,
        n=body.n,
        echo=[(p if isinstance(p, str) else engine.tokenizer.decode(p)) if body.echo else "" for p in body.prompt],
        token_texts=state.token_texts if body.logprobs is not None else None,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    streams = []
    for i, (ids, gen) in enumerate(zip(prompt_ids, gens, strict=True)):
        state.log_prompt(f"{responder.request_id}-{i}", body.prompt[i], gen)
        streams.append(state.generate(ids, gen, f"{responder.request_id}-{i}", body.session_id))
    if body.stream:
        started: list[AsyncIterator[RequestOutput]] = []
        try:
            for s in streams:
                started.append(await unless_disconnected(primed(s), request))
        except BaseException:
            for s in [*started, *streams[len(started):]]:
                await s.aclose()
            raise
        return sse_response(responder.chunks(merge(started)))
    return JSONResponse(await unless_disconnected(responder.collect(merge(streams)), request))


@dataclass
class CompletionResponder:
    request_id: str
    model: str
    n: int
    echo: list[str]  # per prompt: the text to put before the completion ("" without echo)
    token_texts: TokenTexts | None = None  # set when logprobs were asked for
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def _usage(self, prompt: dict[int, int], cached: dict[int, int], outputs: dict[int, int]) -> Usage:
        p, c = sum(prompt.values()), sum(outputs.values())
        return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(cached.values())))

    async def collect(self, outputs: AsyncIterator[tuple[int, RequestOutput]]) -> dict[str, Any]:
        total = len(self.echo) * self.n
        texts = [self.echo[k // self.n] for k in range(total)]
        logprobs: list[dict[str, Any] | None] = [None] * total
        reasons: list[str | None] = [None] * total
        prompt, cached, produced = {}, {}, {}
        async for p, out in outputs:
            k = p * self.n + out.index
            if self.token_texts is not None and out.logprobs is not None:
                part = self.token_texts.completion_logprobs(out.token_ids, out.logprobs, len(texts[k]))
                logprobs[k] = extend_completion_logprobs(logprobs[k], part)
            texts[k] += out.text
            prompt[p], cached[p] = out.num_prompt_tokens, out.num_cached_tokens
            produced[k] = out.num_output_tokens
            if out.finished:
                reasons[k] = out.finish_reason
        if self.token_texts is not None:  # a choice with no tokens still gets the (empty) structure
            empty = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            logprobs = [lp if lp is not None else dict(empty) for lp in logprobs]
        choices = [CompletionChoice(index=k, text=texts[k], logprobs=logprobs[k], finish_reason=reasons[k])
                   for k in range(total)]
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=choices,
                                  usage=self._usage(prompt, cached, produced)).model_dump()

    def _chunk(self, k: int, text: str, logprobs: dict | None, reason: str | None) -> str:
        choice = {"index": k, "text": text, "logprobs": logprobs, "finish_reason": reason}
        chunk = {"id": self.request_id, "object": "text_completion", "created": self.created, "model": self.model,
                 "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return sse(chunk)

    async def chunks(self, outputs: AsyncIterator[tuple[int, RequestOutput]]) -> AsyncIterator[str]:
        offsets = [len(self.echo[k // self.n]) for k in range(len(self.echo) * self.n)]
        for k, offset in enumerate(offsets):
            if offset:
                yield self._chunk(k, self.echo[k // self.n], None, None)
        prompt, cached, produced = {}, {}, {}
        try:
            async for p, out in outputs:
                k = p * self.n + out.index
                logprobs = None
                if self.token_texts is not None and out.logprobs is not None:
                    logprobs = self.token_texts.completion_logprobs(out.token_ids, out.logprobs, offsets[k])
                offsets[k] += len(out.text)
                prompt[p], cached[p] = out.num_prompt_tokens, out.num_cached_tokens
                produced[k] = out.num_output_tokens
                if out.text or logprobs or out.finished:
                    yield self._chunk(k, out.text, logprobs, out.finish_reason if out.finished else None)
            if self.include_usage:
                usage = self._usage(prompt, cached, produced).model_dump()
                yield sse({"id": self.request_id, "object": "text_completion", "created": self.created,
                           "model": self.model, "choices": [], "usage": usage})
        except APIError as e:
            yield sse(error_body(e.message, e.status, e.param, e.code))
        yield SSE_DONE


@router.post("/v1/encode", response_model=EncodeResponse)
def encode(body: EncodeRequest, request: Request) -> EncodeResponse:
    """A plain `def`: FastAPI runs it in a worker thread, so long inputs do not hold up the event loop."""
    state: ServerState = request.app.state.server
    engine = state.engine
    tokenizer = engine.tokenizer

    def one(text: str) -> list[int]:
        if not body.do_preprocess:
            return tokenizer.encode(text, add_bos=body.add_bos)
        try:
            ids = engine.encode_prompt(text)
        except ValueError as e:
            raise APIError(str(e), param="input") from None
        if not body.add_bos and ids and ids[0] == tokenizer.bos_token_id:
            ids = ids[1:]
        return ids

    if isinstance(body.input, str):
        ids = one(body.input)
        return EncodeResponse(input_ids=ids, length=len(ids))
    encoded = [one(text) for text in body.input]
    return EncodeResponse(input_ids=encoded, length=[len(ids) for ids in encoded])
