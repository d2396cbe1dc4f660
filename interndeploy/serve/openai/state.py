"""The server's settings and shared state: the engine, defaults, metrics, and the requests it is running.

`ServerState.generate` is the one way endpoints reach the engine: it names the request, files it under its
LMDeploy `session_id` (for /abort_request), times it for /metrics and turns bad-request errors raised when the
engine builds the request (prompt too long, invalid response_format...) into 400s.

Admission (`ServerState.admit`, before any engine work): a request with more than --max-n samples is a 400; one
that would take the queue past --max-queued-requests, or that arrives while the server drains for shutdown, is a
503 with Retry-After. The queue is the samples admitted here that have not produced their first output yet
(waiting in the engine's inbox or scheduler, or being prefilled); a request with n samples counts n.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ...config import ConfigError, GenerationConfig
from ...engine.async_engine import EngineError
from ...engine.request import RequestOutput
from ...vl.media import MediaPolicy
from ..metrics import ServerMetrics
from .defaults import server_gen_defaults
from .errors import APIError
from .logprobs import TokenTexts
from .protocol import MAX_N

logger = logging.getLogger("interndeploy")


@dataclass
class ServerSettings:
    model_name: str | None = None  # id in /v1/models; None: the engine's (the model path as given)
    api_keys: list[str] = field(default_factory=list)  # empty: no authentication
    reasoning_parser: str | None = None  # None: by chat template family, when thinking is on
    tool_call_parser: str | None = None  # None: by chat template family, when the request has tools
    allow_origins: list[str] | None = None  # None: no CORS middleware
    allow_credentials: bool = False
    allow_methods: list[str] = field(default_factory=lambda: ["*"])
    allow_headers: list[str] = field(default_factory=lambda: ["*"])
    max_concurrent_requests: int | None = None  # generation requests at once; more get 503
    max_queued_requests: int | None = None  # samples waiting for their first output; more get 503
    max_n: int = MAX_N  # samples per request (n; times the prompts of a completions request)
    max_request_bytes: int = 32 << 20  # request bodies larger than this get 413
    max_log_len: int | None = None  # characters of prompts logged per request (None: all; logged at INFO)
    disable_docs: bool = False
    enable_metrics: bool = True
    media_policy: MediaPolicy = field(default_factory=MediaPolicy)  # which image/video URLs may be fetched


class ServerState:
    def __init__(self, engine: Any, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.model_name = settings.model_name or engine.model_name
        self.defaults: GenerationConfig = server_gen_defaults(engine.info, self.model_name)
        self.metrics = ServerMetrics(engine) if settings.enable_metrics else None
        self.token_texts = TokenTexts(engine.tokenizer)
        special_ids = engine.tokenizer.all_special_ids
        self.special_tokens = [t for t, i in engine.tokenizer.special_tokens.items() if i in special_ids]
        self._sessions: dict[int, set[str]] = {}  # LMDeploy session_id -> running request ids
        self._running: set[str] = set()
        self.queued = 0  # samples admitted that have not produced their first output (see _admit)
        self.draining = False  # set at shutdown: generation requests are refused, /health is 503
        if self.metrics is not None:
            self.metrics.queued.set_function(lambda: self.queued)

    @property
    def num_running(self) -> int:
        """Engine requests being served (a completions request counts one per prompt)."""
        return len(self._running)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                           404, param="model", code="model_not_found")

    def check_n(self, num_samples: int, param: str = "n") -> None:
        """400 for a request of more samples than --max-n (n, or n times the prompts of a completions request)."""
        cap = self.settings.max_n
        if num_samples > cap:
            what = "n" if param == "n" else "n times the number of prompts"
            raise APIError(f"{what} is {num_samples}, above this server's limit of {cap} samples per request "
                           "(--max-n); ask for fewer", param=param, code="too_many_samples")

    def refusal(self, num_samples: int = 1) -> APIError | None:
        """The 503 for a request of `num_samples` samples while draining or when the queue cannot take them; None
        when it may go ahead. Counted in /metrics."""
        error = None
        limit = self.settings.max_queued_requests
        if self.draining:
            error = APIError("the server is shutting down; send the request to another replica", 503,
                             code="shutting_down", headers={"Retry-After": "5"})
        elif limit is not None and self.queued + num_samples > limit:
            error = APIError(f"the waiting queue is full ({self.queued} samples wait for their first token, "
                             f"--max-queued-requests {limit}); retry shortly", 503, code="queue_full",
                             headers={"Retry-After": "1"})
        if error is not None:
            self.count_rejected(error.code or "")
        return error

    def count_rejected(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason).inc()

    def log_prompt(self, request_id: str, prompt: Any, gen: GenerationConfig) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        text = str(prompt)
        limit = self.settings.max_log_len
        if limit is not None and len(text) > limit:
            text = text[:limit] + "…"
        logger.info("request %s: prompt=%r max_new_tokens=%d n=%d temperature=%s",
                    request_id, text, gen.max_new_tokens, gen.n, gen.temperature if gen.do_sample else 0)

    # ---- running requests -------------------------------------------------------------------

    def abort(self, *, session_id: int = -1, request_id: str | None = None, abort_all: bool = False) -> int:
        """Abort matching requests; the number aborted."""
        if abort_all:
            targets = set(self._running)
        elif request_id is not None:  # a completions response id covers its prompts' requests (id-0, id-1...)
            targets = {r for r in self._running if r == request_id or r.startswith(request_id + "-")}
        else:
            targets = set(self._sessions.get(session_id, ()))
        for rid in targets:
            self.engine.abort(rid)
        return len(targets)

    async def generate(
        self, prompt_ids: list[int], gen: GenerationConfig, request_id: str, session_id: int = -1,
        multimodal: Any = None,
    ) -> AsyncIterator[RequestOutput]:
        """The engine's outputs; raises APIError (before the first output) for a request the engine refuses or
        that the server cannot admit now."""
        refusal = self.refusal(gen.n)  # no await between this check and raising self.queued: exact under bursts
        if refusal is not None:
            raise refusal
        media = {"multimodal": multimodal} if multimodal is not None else {}  # images/videos (engine.multimodal)
        stream = self.engine.generate(prompt_ids, gen, request_id, **media)
        timer = self.metrics.timer() if self.metrics else None
        self._running.add(request_id)
        if session_id != -1:
            self._sessions.setdefault(session_id, set()).add(request_id)
        self.queued += gen.n
        started = ended = aborted = False
        try:
            try:
                first = await anext(stream)
            except ConfigError as e:  # e.g. response_format that does not compile
                param = "response_format" if str(e).startswith("response_format") else None
                raise APIError(str(e), param=param) from None
            except ValueError as e:  # RequestError: does not fit session_len, empty prompt
                raise APIError(str(e)) from None
            finally:
                self.queued -= gen.n
            started = True
            aborted = first.finish_reason == "abort"
            if timer:
                timer.output(first.num_output_tokens)
            yield first
            async for out in stream:
                if timer:
                    timer.output(out.num_output_tokens)
                aborted = aborted or out.finish_reason == "abort"
                yield out
            ended = True
        except EngineError as e:
            ended = True
            if self.draining:
                raise APIError("the server shut down before this request finished", 503, code="shutting_down",
                               headers={"Retry-After": "5"}) from None
            raise APIError(f"the engine failed on this request: {e}", 500, code="engine_error") from None
        finally:
            if self.metrics and started and (aborted or not ended):  # cut by its client, /abort_request, shutdown
                self.metrics.aborted.inc()
            await stream.aclose()
            self._running.discard(request_id)
            if session_id != -1:
                ids = self._sessions.get(session_id, set())
                ids.discard(request_id)
                if not ids:
                    self._sessions.pop(session_id, None)
        if timer:
            timer.finish()
