"""A request's sampling fields -> GenerationConfig, and the checks that need the prompt length.

Precedence per field: the request, then the server defaults (defaults.server_gen_defaults). Sampling is on unless
the temperature is 0, as in OpenAI's API; `max_tokens` absent means "up to session_len".
"""

from __future__ import annotations

from ...config import ConfigError, GenerationConfig
from .errors import APIError
from .protocol import SamplingRequest


def check_length(prompt_len: int, max_new_tokens: int | None, session_len: int, param: str = "max_tokens") -> int:
    """The number of new tokens to allow; 400 when the prompt (plus max_tokens, if given) does not fit."""
    if prompt_len >= session_len:
        raise APIError(
            f"the prompt has {prompt_len} tokens but session_len is {session_len}: no room for a reply; "
            "shorten the prompt or start the server with a larger --session-len",
            param="messages" if param == "max_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if max_new_tokens is None:
        return session_len - prompt_len
    if prompt_len + max_new_tokens > session_len:
        raise APIError(
            f"the prompt has {prompt_len} tokens and {param} asks for {max_new_tokens} more: "
            f"{prompt_len + max_new_tokens} > session_len {session_len}; lower {param} to at most "
            f"{session_len - prompt_len} or start the server with a larger --session-len",
            param=param,
            code="context_length_exceeded",
        )
    return max_new_tokens


def gen_config(
    req: SamplingRequest,
    defaults: GenerationConfig,
    *,
    max_new_tokens: int,
    logprobs: int | None,
    vocab_size: int,
    skip_special_tokens: bool | None = None,
) -> GenerationConfig:
    """The engine's GenerationConfig for a request; `skip_special_tokens` overrides the request's (tool parsing)."""
    for i, token_id in enumerate(req.stop_token_ids or []):
        if not 0 <= token_id < vocab_size:
            raise APIError(f"stop_token_ids[{i}] = {token_id} is not a token id (vocabulary size {vocab_size})",
                           param="stop_token_ids")
    temperature = req.temperature if req.temperature is not None else defaults.temperature
    top_k = req.top_k if req.top_k is not None else defaults.top_k
    try:
        return defaults.replace(
            n=req.n,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature,
            top_p=req.top_p if req.top_p is not None else defaults.top_p,
            top_k=max(top_k, 0),
            min_p=req.min_p if req.min_p is not None else defaults.min_p,
            repetition_penalty=req.repetition_penalty if req.repetition_penalty is not None
            else defaults.repetition_penalty,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            ignore_eos=req.ignore_eos,
            random_seed=req.seed,
            stop_words=req.stop_words or None,
            stop_token_ids=req.stop_token_ids or None,
            min_new_tokens=req.min_new_tokens,
            skip_special_tokens=req.skip_special_tokens if skip_special_tokens is None else skip_special_tokens,
            spaces_between_special_tokens=req.spaces_between_special_tokens,
            include_stop_str_in_output=req.include_stop_str_in_output,
            logprobs=logprobs,
            response_format=req.response_format.engine_dict() if req.response_format else None,
        )
    except ConfigError as e:
        raise APIError(str(e), param=str(e).split(" ", 1)[0]) from None
