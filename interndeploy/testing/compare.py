"""Drive one of our models through prefill and greedy decode on a paged cache, and the HF reference beside it.

Shared by the per-architecture model tests: they build a tiny directory, load both models, and
compare `PagedRun` logits with `hf_logits` / `hf_cached_decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from interndeploy.model_dir import load_model_info
from interndeploy.models.loader import load_weights
from interndeploy.models.registry import get_model_class
from interndeploy.quant.formats import linear_methods, resolve_weight_format
from interndeploy.testing.attention import PagedBatch, attach_kv_caches, detach_kv_caches
from interndeploy.worker.forward_context import forward_context


def load_our_model(model_dir: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Our model for a directory, built from its raw config.json (quantized if it says so; the language
    model of a multimodal checkpoint), weights loaded."""
    info = load_model_info(model_dir)
    raw = info.config
    config = SimpleNamespace(**raw)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with linear_methods(raw, resolve_weight_format(raw, None, model_dir)):
            model = get_model_class(config.architectures)(config)
    finally:
        torch.set_default_dtype(prev)
    load_weights(model, model_dir, dtype, info.weight_prefixes)
    return model.eval()


@dataclass
class PagedRun:
    prefill_logits: list[torch.Tensor]  # per sequence, [prompt_len, V] fp32
    tokens: list[list[int]]  # per sequence, the greedy tokens chosen after the prompt
    decode_logits: list[list[torch.Tensor]]  # per sequence and decode step, [V] fp32 (input = tokens[b][step])


@torch.no_grad()
def run_paged(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    block_size: int = 4,
    decode_steps: int = 3,
    prefill_chunk: int | None = None,
    use_cache: bool = True,
    quant_policy: int = 0,
) -> PagedRun:
    """Prefill all prompts in one batch (or in chunks of `prefill_chunk` tokens per sequence), then decode
    `decode_steps` tokens per sequence greedily, one batched step at a time (KV cache int8 / int4 with
    quant_policy 8 / 4)."""
    batch = PagedBatch([len(p) + decode_steps for p in prompts], block_size)
    if use_cache:
        dtype = next(model.parameters()).dtype
        attach_kv_caches(model, batch.num_blocks, block_size, dtype=dtype, quant_policy=quant_policy)
    else:
        detach_kv_caches(model)
    done = [0] * len(prompts)
    prefill: list[list[torch.Tensor]] = [[] for _ in prompts]
    while any(d < len(p) for d, p in zip(done, prompts, strict=True)):
        step = [min(len(p) - d, prefill_chunk or len(p)) for d, p in zip(done, prompts, strict=True)]
        ids = torch.tensor([t for d, n, p in zip(done, step, prompts, strict=True) for t in p[d : d + n]])
        meta, positions = batch.step(step)
        with forward_context(meta):
            logits = model.compute_logits(model(ids, positions))
        for b, part in enumerate(logits.split(step)):
            prefill[b].append(part)
        done = [d + n for d, n in zip(done, step, strict=True)]
    run = PagedRun([torch.cat(p) for p in prefill], [[] for _ in prompts], [[] for _ in prompts])
    last = [int(lg[-1].argmax()) for lg in run.prefill_logits]
    for _ in range(decode_steps):
        for b, t in enumerate(last):
            run.tokens[b].append(t)
        meta, positions = batch.step([1] * len(prompts))
        with forward_context(meta):
            logits = model.compute_logits(model(torch.tensor(last), positions))
        for b in range(len(prompts)):
            run.decode_logits[b].append(logits[b])
        last = [int(x) for x in logits.argmax(-1)]
    detach_kv_caches(model)
    return run


@torch.no_grad()
def hf_logits(hf: Any, ids: list[int]) -> torch.Tensor:
    """Full-recompute logits [len(ids), V] of the transformers model for one sequence."""
    reset_hf_rope(hf)
    return hf(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def hf_cached_decode(hf: Any, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """HF logits [V] after feeding each of `tokens` one at a time through its own KV cache."""
    reset_hf_rope(hf)
    out = hf(torch.tensor([prompt]), use_cache=True)
    past, logits = out.past_key_values, []
    for t in tokens:
        out = hf(torch.tensor([[t]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits.append(out.logits[0, -1].float())
    return logits


def reset_hf_rope(hf: Any) -> None:
    """Forget the inv_freq HF's dynamic rope grew to on an earlier, longer sequence (it is stateful)."""
    rope = hf.model.rotary_emb
    if hasattr(rope, "original_inv_freq"):
        rope.inv_freq = rope.original_inv_freq.clone()
        rope.max_seq_len_cached = rope.original_max_seq_len


def random_prompts(vocab_size: int, lens: list[int], seed: int = 1) -> list[list[int]]:
    """Token ids in [3, vocab_size): no <unk>/<s>/</s>."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (n,), generator=g).tolist() for n in lens]


def assert_matches_hf(
    model_dir: Path, lens: list[int], *, block_size: int = 4, decode_steps: int = 3, atol: float = 1e-4, **kw: Any
) -> PagedRun:
    """Our batched prefill logits (every token) and greedy decode logits equal HF's full recompute (fp32)."""
    from interndeploy.testing.tiny_models import hf_reference_model

    ours, hf = load_our_model(model_dir), hf_reference_model(model_dir)
    prompts = random_prompts(hf.config.vocab_size, lens)
    run = run_paged(ours, prompts, block_size=block_size, decode_steps=decode_steps, **kw)
    for b, prompt in enumerate(prompts):
        torch.testing.assert_close(run.prefill_logits[b], hf_logits(hf, prompt), atol=atol, rtol=0)
        ref = hf_logits(hf, prompt + run.tokens[b])
        for step, logits in enumerate(run.decode_logits[b]):
            torch.testing.assert_close(logits, ref[len(prompt) + step], atol=atol, rtol=0)
        # greedy: each token we chose is HF's argmax at that point
        assert run.tokens[b] == ref[len(prompt) - 1 : -1].argmax(-1).tolist()
    return run
