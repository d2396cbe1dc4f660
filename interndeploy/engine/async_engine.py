"""The asyncio front of the engine: prompts in, streamed RequestOutputs back.

    caller coroutines ──add/abort──▶ inbox ──▶ engine thread: LLMEngine.step() loop
          ▲                                          │
          └──── per-request asyncio.Queue ◀──────────┘  (loop.call_soon_threadsafe)

The model runs in one background thread so the event loop (HTTP server, CLI)
stays responsive; only that thread touches the LLMEngine.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..chat.templates import ChatTemplate
from ..config import ChatTemplateConfig, EngineConfig, GenerationConfig
from ..model_dir import ModelInfo, load_model_info
from ..tokenizer import Tokenizer
from .llm_engine import LLMEngine
from .request import EngineRequest, RequestOutput, build_request

logger = logging.getLogger("interndeploy")

Messages = str | list[dict[str, Any]]
Sink = Callable[[RequestOutput], None]

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
        self.engine = LLMEngine(self.info, self.cfg, self.tokenizer, self._grammar_eos_ids())
        self.session_len = self.engine.session_len
        self.default_gen_config = self._default_gen_config()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._sinks: dict[str, Sink] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="interndeploy-engine", daemon=True)
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
        self, prompt_ids: list[int], gen: GenerationConfig, request_id: str | None = None
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
        )

    async def generate(
        self, prompt_ids: list[int], gen: GenerationConfig | None = None, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Stream outputs of all n samples; leaving early (or cancellation) aborts the request."""
        req = self.make_request(prompt_ids, gen or self.default_gen_config, request_id)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[RequestOutput] = asyncio.Queue()

        def sink(out: RequestOutput) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, out)
            except RuntimeError:  # the caller's loop is gone; the abort below cleans up
                pass

        self._submit(("add", req, sink))
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
                    sink(RequestOutput(payload.request_id, 0, "", [], None, 0, 0, finished=True, error=str(e)))
            elif kind == "abort":
                self._dispatch(self.engine.abort_request(payload))

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is not None:
                sink(out)
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
