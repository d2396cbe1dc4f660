"""`pipeline()`: LMDeploy's synchronous Python API over the AsyncEngine.

    pipe = pipeline("/path/to/internlm2_5-7b-chat")
    pipe("hi")                          -> Response
    pipe(["hi", "tell me a joke"])      -> [Response, Response]
    pipe([{"role": "user", ...}, ...])  -> Response (one conversation)
    pipe.stream_infer(...)              -> Response deltas as they are generated
    pipe.chat("hi", session)            -> Session (multi-turn)
    pipe(("describe it", image))        -> Response (a vision-language model; image: PIL, URL or path)
    pipe([("a", img1), ("b", [i2, i3])]) -> [Response, Response]
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .config import ChatTemplateConfig, EngineConfig, GenerationConfig
from .engine.async_engine import AsyncEngine, Messages
from .engine.request import RequestOutput
from .tokenizer import Tokenizer
from .worker.model_runner import TokenLogprobs


@dataclass
class Response:
    text: str
    generate_token_len: int
    input_token_len: int
    finish_reason: str | None = None  # stop | length | abort; None while streaming
    token_ids: list[int] = field(default_factory=list)  # generated token ids
    logprobs: list[dict[int, float]] | None = None  # per generated token: {token id: logprob} of the top-N
    index: int = 0  # which prompt of the batch
    session_id: int = 0

    def __str__(self) -> str:
        return self.text


@dataclass
class Session:
    """A multi-turn conversation for `pipeline.chat`."""

    session_id: int
    history: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-style messages so far
    response: Response | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.history


def _logprob_dicts(items: list[TokenLogprobs] | None) -> list[dict[int, float]] | None:
    if items is None:
        return None
    return [dict(lp.top) if lp.top else {} for lp in items]


def _is_batch(prompts: Any) -> bool:
    """A list of prompts (strings or conversations), as opposed to one conversation."""
    return isinstance(prompts, list) and bool(prompts) and not isinstance(prompts[0], dict)


class Pipeline:
    def __init__(
        self,
        model_path: str,
        backend_config: EngineConfig | None = None,
        chat_template_config: ChatTemplateConfig | None = None,
        **kwargs: Any,
    ) -> None:
        self.engine = AsyncEngine(model_path, backend_config, chat_template_config, model_name=kwargs.get("model_name"),
                                  vision_config=kwargs.get("vision_config"))
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="interndeploy-pipeline", daemon=True)
        self._loop_thread.start()
        self._session_ids = itertools.count(1)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    # ---- batch ------------------------------------------------------------------------------

    def __call__(
        self,
        prompts: Messages | list[Messages],
        gen_config: GenerationConfig | list[GenerationConfig] | None = None,
        do_preprocess: bool = True,
        **template_kwargs: Any,
    ) -> Response | list[Response]:
        return self.batch_infer(prompts, gen_config, do_preprocess, **template_kwargs)

    def batch_infer(
        self,
        prompts: Messages | list[Messages],
        gen_config: GenerationConfig | list[GenerationConfig] | None = None,
        do_preprocess: bool = True,
        **template_kwargs: Any,
    ) -> Response | list[Response]:
        batch = _is_batch(prompts)
        items = prompts if batch else [prompts]
        gens = self._gen_configs(gen_config, len(items))
        results: list[dict[int, Response]] = [{} for _ in items]
        for idx, sample, resp in self._stream(items, gens, do_preprocess, template_kwargs):
            acc = results[idx].get(sample)
            results[idx][sample] = resp if acc is None else self._extend(acc, resp)
        merged = [[r[k] for k in sorted(r)] for r in results]
        flat = [r[0] if len(r) == 1 else r for r in merged]
        return flat if batch else flat[0]

    def stream_infer(
        self,
        prompts: Messages | list[Messages],
        gen_config: GenerationConfig | list[GenerationConfig] | None = None,
        do_preprocess: bool = True,
        **template_kwargs: Any,
    ) -> Iterator[Response]:
        """Yield incremental Responses (new text only); `index` says which prompt each belongs to."""
        items = prompts if _is_batch(prompts) else [prompts]
        gens = self._gen_configs(gen_config, len(items))
        for _, _, resp in self._stream(items, gens, do_preprocess, template_kwargs):
            yield resp

    def chat(
        self,
        prompt: str | list[dict[str, Any]],
        session: Session | None = None,
        gen_config: GenerationConfig | None = None,
        stream_response: bool = False,
        **template_kwargs: Any,
    ) -> Session | Iterator[Response]:
        session = session or Session(next(self._session_ids))
        if isinstance(prompt, tuple):  # (text, image): LMDeploy's VLM prompt
            from .vl.prompt import tuple_to_messages

            prompt = tuple_to_messages(prompt)
        turn = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        messages = session.history + turn
        gens = self._gen_configs(gen_config, 1)

        def run() -> Iterator[Response]:
            acc = None
            for _, _, resp in self._stream([messages], gens, True, template_kwargs):
                resp.session_id = session.session_id
                acc = replace(resp, token_ids=list(resp.token_ids)) if acc is None else self._extend(acc, resp)
                yield resp
            session.response = acc
            session.history = messages + [{"role": "assistant", "content": session.response.text}]

        if stream_response:
            return run()
        for _ in run():
            pass
        return session

    # ---- plumbing ---------------------------------------------------------------------------

    def _gen_configs(self, gen: GenerationConfig | list[GenerationConfig] | None, n: int) -> list[GenerationConfig]:
        if isinstance(gen, list):
            if len(gen) != n:
                raise ValueError(f"got {len(gen)} gen_configs for {n} prompts")
            return gen
        return [gen or self.engine.default_gen_config] * n

    def _stream(
        self, items: list[Messages], gens: list[GenerationConfig], do_preprocess: bool, template_kwargs: dict
    ) -> Iterator[tuple[int, int, Response]]:
        """Run all prompts concurrently on the engine; yield (prompt index, sample index, delta Response)."""
        encoded = [self._encode(p, do_preprocess, template_kwargs) for p in items]
        reqs = [self.engine.make_request(x, g, multimodal=mm)
                for (x, mm), g in zip(encoded, gens, strict=True)]  # validates first
        out_q: queue.Queue = queue.Queue()
        done = object()

        async def one(i: int) -> None:
            try:
                req = reqs[i]
                async for out in self.engine.generate(req.prompt_token_ids, gens[i], req.request_id, req.multimodal):
                    out_q.put((i, out))
            except BaseException as e:  # delivered to the caller's thread
                out_q.put((i, e))
            finally:
                out_q.put((i, done))

        futures = [asyncio.run_coroutine_threadsafe(one(i), self._loop) for i in range(len(items))]
        remaining = len(items)
        try:
            while remaining:
                i, out = out_q.get()
                if out is done:
                    remaining -= 1
                elif isinstance(out, BaseException):
                    raise out
                else:
                    yield i, out.index, self._to_response(i, out)
        finally:
            for f in futures:
                f.cancel()

    def _encode(self, prompt: Messages | tuple, do_preprocess: bool, template_kwargs: dict) -> tuple[list[int], Any]:
        """(token ids, MultimodalInputs or None): images and videos are fetched and decoded on the pipeline's loop."""
        from .vl.prompt import has_media

        if isinstance(prompt, tuple) or has_media(prompt):
            job = self.engine.encode_chat(prompt, None, do_preprocess, **template_kwargs)
            return asyncio.run_coroutine_threadsafe(job, self._loop).result()
        return self.engine.encode_prompt(prompt, do_preprocess, **template_kwargs), None

    @staticmethod
    def _to_response(i: int, out: RequestOutput) -> Response:
        return Response(
            text=out.text,
            generate_token_len=out.num_output_tokens,
            input_token_len=out.num_prompt_tokens,
            finish_reason=out.finish_reason,
            token_ids=list(out.token_ids),
            logprobs=_logprob_dicts(out.logprobs),
            index=i,
        )

    @staticmethod
    def _extend(acc: Response, part: Response) -> Response:
        """Append a delta to the accumulated Response of the same sample."""
        acc.text += part.text
        acc.token_ids += part.token_ids
        acc.generate_token_len = part.generate_token_len
        acc.finish_reason = part.finish_reason or acc.finish_reason
        if part.logprobs is not None:
            acc.logprobs = (acc.logprobs or []) + part.logprobs
        return acc

    def close(self) -> None:
        self.engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pipeline(
    model_path: str,
    backend_config: EngineConfig | None = None,
    chat_template_config: ChatTemplateConfig | None = None,
    log_level: str = "WARNING",
    **kwargs: Any,
) -> Pipeline:
    from .logger import setup_logging

    setup_logging(log_level)
    return Pipeline(model_path, backend_config, chat_template_config, **kwargs)
