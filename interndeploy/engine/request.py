"""What enters the engine (EngineRequest) and what comes out of each step (RequestOutput)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import GenerationConfig
from .sampling_params import SamplingParams

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer
    from ..worker.model_runner import TokenLogprobs
    from .multimodal import MultimodalInputs


class RequestError(ValueError):
    """The request cannot be served as given (e.g. longer than session_len); the message says why."""


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    n: int = 1  # independent samples of the same prompt
    stop_strings: list[str] = field(default_factory=list)  # matched in the decoded text, not emitted
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    multimodal: MultimodalInputs | None = None  # images/videos: pixels and the prompt positions they fill


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    index: int  # which of the n samples
    text: str  # new text since the previous output of this sample
    token_ids: list[int]  # new token ids since the previous output (stop tokens excluded)
    logprobs: list[TokenLogprobs] | None  # one per new token, when asked
    num_prompt_tokens: int
    num_output_tokens: int  # cumulative generated tokens (stop token included, as usage counts it)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort
    error: str | None = None  # set when the engine failed on this request


def _as_list(x: int | list[int] | None) -> list[int]:
    if x is None:
        return []
    return [x] if isinstance(x, int) else list(x)


def build_request(
    request_id: str,
    prompt_token_ids: list[int],
    gen: GenerationConfig,
    tokenizer: Tokenizer,
    *,
    session_len: int,
    eos_token_ids: list[int],
    template_stop_words: list[str] = (),
    compile_grammar: Callable[[dict | None], str | None] | None = None,
    multimodal: MultimodalInputs | None = None,
) -> EngineRequest:
    """Resolve a GenerationConfig into token-level parameters and check the length."""
    gen.validate()
    prompt_len = len(prompt_token_ids)
    if prompt_len == 0:
        raise RequestError("the prompt is empty")
    if prompt_len >= session_len:
        raise RequestError(
            f"the prompt has {prompt_len} tokens, which does not fit session_len {session_len}; "
            "shorten it or raise --session-len"
        )
    stop_ids = [] if gen.ignore_eos else list(eos_token_ids)
    stop_strings: list[str] = []
    for word in [*template_stop_words, *(gen.stop_words or [])]:
        token_id = tokenizer.token_to_id(word)
        if token_id is not None and token_id in tokenizer.all_special_ids:
            stop_ids.append(token_id)
        else:
            stop_strings.append(word)
    stop_ids += _as_list(gen.stop_token_ids)
    bad = [tokenizer.encode(w, add_bos=False) for w in gen.bad_words or []]
    bad += [[t] for t in gen.bad_token_ids or []]
    params = SamplingParams(
        temperature=gen.temperature if gen.do_sample else 0.0,
        top_k=gen.top_k,
        top_p=gen.top_p,
        min_p=gen.min_p,
        repetition_penalty=gen.repetition_penalty,
        presence_penalty=gen.presence_penalty,
        frequency_penalty=gen.frequency_penalty,
        seed=gen.random_seed,
        max_new_tokens=min(gen.max_new_tokens, session_len - prompt_len),
        min_new_tokens=gen.min_new_tokens or 0,
        ignore_eos=gen.ignore_eos,
        stop_token_ids=list(dict.fromkeys(stop_ids)),
        bad_word_ids=[w for w in bad if w],
        logprobs=gen.logprobs,
        grammar=compile_grammar(gen.response_format) if compile_grammar and gen.response_format else None,
    )
    return EngineRequest(
        request_id=request_id,
        prompt_token_ids=list(prompt_token_ids),
        params=params,
        n=gen.n,
        stop_strings=list(dict.fromkeys(stop_strings)),
        include_stop_str_in_output=gen.include_stop_str_in_output,
        skip_special_tokens=gen.skip_special_tokens,
        spaces_between_special_tokens=gen.spaces_between_special_tokens,
        multimodal=multimodal,
    )
