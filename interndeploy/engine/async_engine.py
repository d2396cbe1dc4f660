"""The asyncio front of the engine: prompts in, streamed RequestOutputs back.

    caller coroutines ──add/abort──▶ inbox ──▶ engine thread: LLMEngine.step() loop
          ▲                                          │
          └──── per-request asyncio.Queue ◀──────────┘  (loop.call_soon_threadsafe)

The model runs in one background thread so the event loop (HTTP server, CLI)
stays responsive; only that thread touches the LLMEngine.
"""

from __future__ import annotations

import asyncio
import cProfile
import logging
import os
import queue
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..chat.templates import ChatTemplate
from ..config import ChatTemplateConfig, EngineConfig, GenerationConfig, VisionConfig
from ..model_dir import ModelInfo, load_model_info
from ..tokenizer import Tokenizer
from .llm_engine import LLMEngine
from .multimodal import MultimodalInputs
from .request import EngineRequest, RequestOutput, build_request

logger = logging.getLogger("interndeploy")

Messages = str | list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Sink:
    """Where a request's outputs go: a queue read by a coroutine on `loop`."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


def _profiled(loop: Callable[[], None], path: str) -> None:
    prof = cProfile.Profile()
    prof.enable()
    try:
        loop()
    finally:
        prof.disable()
        prof.dump_stats(path)


def _shorten_gil_switch_interval() -> None:
    """The engine thread shares the GIL with the event loop's thread. When it returns from a call that let
    the GIL go (a device wait, a collective) while the loop's thread runs Python (waking a step's streams),
    it waits up to the switch interval (5 ms by default): a whole decode step. INTERNDEPLOY_GIL_SWITCH_MS
    (default 0.5; 0 keeps Python's) bounds that wait; the interval is process-wide and only ever lowered."""
    ms = float(os.environ.get("INTERNDEPLOY_GIL_SWITCH_MS", "0.5"))
    if ms > 0:
        sys.setswitchinterval(min(sys.getswitchinterval(), ms / 1e3))


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for q, out in items:
        q.put_nowait(out)


def _deliver(items: list[tuple[_Sink, RequestOutput]]) -> None:
    """Hand outputs to their event loops from the engine thread: one wake-up per loop, not one per output
    (a step of 500 sequences would otherwise write 500 times to the loop's self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
    for sink, out in items:
        by_loop.setdefault(sink.loop, []).append((sink.queue, out))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the caller's loop is gone; its generator's abort cleans up
            pass

# generation_config.json keys that set GenerationConfig defaults
_GEN_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class EngineError(RuntimeError):
    """The engine failed while running a request."""


class AsyncEngine:
    def __init__(
        self,
        model: str,
        backend_config: EngineConfig | None = None,
        chat_template_config: ChatTemplateConfig | None = None,
        model_name: str | None = None,
        vision_config: VisionConfig | None = None,
    ) -> None:
        self.cfg = backend_config or EngineConfig()
        self.info: ModelInfo = load_model_info(
            model, self.cfg.revision, self.cfg.load_format == "dummy", self.cfg.language_model_only
        )
        self.model_name = model_name or str(model)
        self.tokenizer = Tokenizer.from_dir(self.info.path)
        self.chat_template = ChatTemplate.resolve(
            self.tokenizer.chat_template, chat_template_config, model_type=self.info.model_type
        )
        self.eos_token_ids = self._eos_token_ids()
        self.vision = self._vision_frontend(vision_config or VisionConfig())
        self.engine = LLMEngine(self.info, self.cfg, self.tokenizer, self._grammar_eos_ids())
        self.session_len = self.engine.session_len
        self.default_gen_config = self._default_gen_config()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._sinks: dict[str, _Sink] = {}
        self._stopping = False
        _shorten_gil_switch_interval()
        # INTERNDEPLOY_PROFILE_ENGINE=FILE: the engine thread runs under cProfile and writes its stats to FILE
        # when it stops (`python -m pstats FILE`): where a step's host time goes under real load
        target = self._loop
        profile_to = os.environ.get("INTERNDEPLOY_PROFILE_ENGINE")
        if profile_to:
            target = partial(_profiled, self._loop, profile_to)
        self._thread = threading.Thread(target=target, name="interndeploy-engine", daemon=True)
        self._thread.start()

    # ---- prompts --------------------------------------------------------------------------

    def _eos_token_ids(self) -> list[int]:
        ids = self.info.generation_config.get("eos_token_id", self.info.config.get("eos_token_id"))
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return list(dict.fromkeys(ids))

    def _grammar_eos_ids(self) -> list[int]:
        """Tokens that end a constrained output: the model's eos ids and the template's stop tokens."""
        ids = list(self.eos_token_ids)
        for word in self.chat_template.stop_words:
            token_id = self.tokenizer.token_to_id(word)
            if token_id is not None and token_id in self.tokenizer.all_special_ids:
                ids.append(token_id)
        return list(dict.fromkeys(ids))

    def _default_gen_config(self) -> GenerationConfig:
        gen = self.info.generation_config
        values = {k: gen[k] for k in _GEN_KEYS if gen.get(k) is not None}
        return GenerationConfig(**values)

    def _vision_frontend(self, vision_config: VisionConfig) -> Any:
        """Images and videos are taken when the checkpoint has a vision tower that runs (vl/frontend.py)."""
        if not self.info.serve_vision:
            return None
        if self.cfg.tp > 1:
            logger.warning("--tp %d: images and videos are not available with tensor parallelism yet; serving %s "
                           "as a text-only model", self.cfg.tp, self.model_name)
            return None
        from ..vl.frontend import VisionFrontend

        return VisionFrontend(self.info, self.tokenizer.token_to_id, vision_config.media_io_kwargs)

    async def encode_chat(
        self, prompt: Messages | tuple, media_policy: Any = None, do_preprocess: bool = True, **template_kwargs: Any
    ) -> tuple[list[int], MultimodalInputs | None]:
        """(token ids, images and videos) of a prompt that may carry media: OpenAI content parts (`image_url`,
        `video_url`...) or a `(text, image)` tuple. `media_policy` (vl.MediaPolicy) says which URLs may be
        fetched (default: the pipeline's, anything). Raises MediaError (a ValueError) for unusable media."""
        from ..vl.media import PIPELINE_POLICY, MediaError
        from ..vl.prompt import has_media, tuple_to_messages

        if isinstance(prompt, tuple):
            prompt = tuple_to_messages(prompt)
        if not has_media(prompt):
            return self.encode_prompt(prompt, do_preprocess, **template_kwargs), None
        if self.vision is None:
            why = "it was started with --language-model-only" if self.info.language_model_only else (
                "it has no vision tower" if not self.info.serve_vision else "vision needs --tp 1 for now")
            raise MediaError(f"{self.model_name} takes text only ({why}); send text content parts", "messages")
        bos = self.tokenizer.bos_token_id if self.tokenizer.add_bos else None
        return await self.vision.encode(
            prompt, lambda msgs: self.render_prompt(msgs, **template_kwargs),
            lambda text: self.tokenizer.encode(text, add_bos=False), bos, media_policy or PIPELINE_POLICY,
            self.session_len,
        )  # fmt: skip

    def render_prompt(self, messages: Messages, **template_kwargs: Any) -> str:
        return self.chat_template.render(
            messages,
            bos_token=self.tokenizer.bos_token,
            eos_token=self.tokenizer.eos_token,
            **template_kwargs,
        )

    def encode_prompt(self, prompt: Messages, do_preprocess: bool = True, **template_kwargs: Any) -> list[int]:
        """Token ids for a prompt: chat template applied unless `do_preprocess` is False.

        With do_preprocess=False a string is tokenized as the model's HF tokenizer does (BOS included).
        """
        if not do_preprocess:
            if not isinstance(prompt, str):
                raise ValueError("do_preprocess=False needs the prompt as a string")
            return self.tokenizer.encode(prompt)
        text = self.render_prompt(prompt, **template_kwargs)
        ids = self.tokenizer.encode(text, add_bos=False)
        bos = self.tokenizer.bos_token_id
        if self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    # ---- requests -------------------------------------------------------------------------

    def make_request(
        self,
        prompt_ids: list[int],
        gen: GenerationConfig,
        request_id: str | None = None,
        multimodal: MultimodalInputs | None = None,
    ) -> EngineRequest:
        return build_request(
            request_id or uuid.uuid4().hex,
            prompt_ids,
            gen,
            self.tokenizer,
            session_len=self.session_len,
            eos_token_ids=self.eos_token_ids,
            template_stop_words=self.chat_template.stop_words,
            compile_grammar=self.engine.grammar.compile,
            multimodal=multimodal,
        )

    async def generate(
        self,
        prompt_ids: list[int],
        gen: GenerationConfig | None = None,
        request_id: str | None = None,
        multimodal: MultimodalInputs | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream outputs of all n samples; leaving early (or cancellation) aborts the request."""
        req = self.make_request(prompt_ids, gen or self.default_gen_config, request_id, multimodal)
        q: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._submit(("add", req, _Sink(asyncio.get_running_loop(), q)))
        remaining = req.n
        try:
            while remaining:
                out = await q.get()
                if out.error:
                    raise EngineError(out.error)
                if out.finished:
                    remaining -= 1
                yield out
        finally:
            if remaining:
                self.abort(req.request_id)

    def abort(self, request_id: str) -> None:
        self._submit(("abort", request_id, None))

    def _submit(self, item: tuple) -> None:
        if self._stopping:
            raise EngineError("the engine is shut down")
        self._inbox.put(item)
        self._wake.set()

    # ---- engine thread --------------------------------------------------------------------

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload, sink = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                try:
                    self.engine.add_request(payload)
                    self._sinks[payload.request_id] = sink
                except Exception as e:  # a bad request must not stop the loop
                    error = RequestOutput(payload.request_id, 0, "", [], None, 0, 0, finished=True, error=str(e))
                    _deliver([(sink, error)])
            elif kind == "abort":
                self._dispatch(self.engine.abort_request(payload))

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        _deliver([(self._sinks[out.request_id], out) for out in outputs if out.request_id in self._sinks])
        for out in outputs:  # after all outputs: a request's n samples may finish in one step
            if out.request_id not in self.engine.requests:
                self._sinks.pop(out.request_id, None)

    def _loop(self) -> None:
        while not self._stopping:
            self._drain_inbox()
            if not self.engine.has_work:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:
                logger.exception("engine step failed; failing the running requests")
                outputs = self.engine.fail_all(f"engine error: {type(e).__name__}: {e}")
            self._dispatch(outputs)

    def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        if not self._thread.is_alive():  # a step still running owns the workers' channel: leave them be
            self.engine.shutdown()
