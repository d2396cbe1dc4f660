"""Token sampler: bans, penalties, greedy / temperature / top-k / top-p / min-p sampling, logprobs.

Per row, in this order:

    bans (-inf) -> repetition penalty -> presence/frequency penalties
      -> greedy rows: argmax
      -> sampled rows: temperature -> top-k -> top-p -> min-p -> exponential race

Sampling uses the exponential race, argmax(probs / q) with q ~ Exp(1) i.i.d., which draws exactly
from `probs` without torch.multinomial and without a host sync. Without min-p it runs in the log domain,
argmax(logits / T - log q): the same token (softmax's normaliser is one constant per row), and no softmax.
Seeded rows take their noise from a generator reseeded with a stable hash of (seed, step), so a seeded row's
token depends only on its own logits, seed and step: not on the batch it is in nor its position there. The
same seed gives the same tokens on the same device type; CPU and CUDA generators produce different streams.

Logprobs are "raw": log_softmax of the logits exactly as given to `Sampler.forward`, before bans,
penalties, temperature and filtering (vLLM's default). They describe the model's distribution, not
the distribution that was sampled from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from interndeploy.engine.sampling_params import SamplingParams

from .step_inputs import host_to_device

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, step: int) -> int:
    """Generator seed for a seeded row's draw at `step`.

    Stable across processes and Python versions (unlike hash()), and 63-bit so that every torch
    backend accepts it.
    """
    return _splitmix64(_splitmix64(seed & _MASK64) + step) >> 1


def _banned_ids(p: SamplingParams, output: list[int], step: int) -> set[int]:
    """Tokens banned at output position `step` (>= len(output) when the last tokens are still on the device:
    then only bans that need no token content apply; the engine keeps such rows in step otherwise)."""
    banned: set[int] = set()
    if step < p.min_new_tokens and not p.ignore_eos:
        banned.update(p.stop_token_ids)
    for word in p.bad_word_ids:
        n = len(word) - 1
        if n < 0 or n > step:
            continue
        # Only the output counts: a bad word is one the model would produce, not one straddling the prompt.
        if n == 0 or (len(output) == step and list(output[step - n :]) == list(word[:-1])):
            banned.add(word[-1])
    return {t for t in banned if t >= 0}


def _row_token_pairs(
    rows: list[int], lengths: list[int], chunks: list[Sequence[int] | np.ndarray], device: torch.device
) -> torch.Tensor:
    """[2, N] i64 (row, token id) for the tokens of `chunks`, row `rows[j]` owning `lengths[j]` of them."""
    # Prompts make N large (B x prompt length) every step: numpy converts lists several times faster
    # than torch.tensor(list), and prompts the caller keeps as int64 arrays cost only a memcpy.
    pairs = np.empty((2, sum(lengths)), dtype=np.int64)
    pairs[0] = np.repeat(np.asarray(rows, dtype=np.int64), lengths)
    np.concatenate([np.asarray(c, dtype=np.int64) for c in chunks], out=pairs[1])
    host = torch.from_numpy(pairs)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


@dataclass(slots=True)
class SamplingBatch:
    """Sampler input for B rows, built on the host once per step by the model runner."""

    temperature: torch.Tensor  # [B] f32, 0 on greedy rows
    top_k: torch.Tensor  # [B] i64, 0 = off (also off when >= V)
    top_p: torch.Tensor  # [B] f32, 1.0 = off
    min_p: torch.Tensor  # [B] f32, 0.0 = off
    repetition_penalty: torch.Tensor  # [B] f32, 1.0 = off
    presence_penalty: torch.Tensor  # [B] f32, 0.0 = off
    frequency_penalty: torch.Tensor  # [B] f32, 0.0 = off
    seeds: list[int | None]  # per-row seed, None = shared RNG
    steps: list[int]  # per-row step index = output tokens so far
    ban_ids: torch.Tensor | None  # [2, N] i64 (row, token id) pairs set to -inf; None = no bans
    repetition_ids: torch.Tensor | None  # [2, N] i64 (row, token id) over prompt + output of rows with a penalty
    output_ids: torch.Tensor | None  # [2, N] i64 (row, token id) over output of rows with presence/frequency
    random_rows: torch.Tensor | None  # [R] i64 rows that sample; None when all rows sample or none does
    seeded: list[tuple[int, int]]  # (position among the sampled rows, derive_seed(seed, step))
    max_logprobs: int | None  # max top-N logprobs over rows; None = no row wants logprobs
    all_greedy: bool  # every row is greedy (temperature == 0)
    all_random: bool  # no row is greedy
    any_top_k: bool  # some sampled row has top-k on
    any_top_p: bool  # some sampled row has top-p on
    any_min_p: bool  # some sampled row has min-p on
    any_penalty: bool  # some row has a repetition, presence or frequency penalty
    num_unseeded: int  # sampled rows that draw from the shared RNG

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        output_token_ids: list[list[int]],
        prompt_token_ids: Sequence[Sequence[int] | np.ndarray],
        device: torch.device,
        num_output_tokens: list[int] | None = None,
    ) -> SamplingBatch:
        """Host-side build; one non-blocking host-to-device copy per tensor field.

        Prompts may be int64 numpy arrays (kept by the caller across steps), which makes the
        repetition-penalty token list a memcpy instead of a per-int conversion. `num_output_tokens`
        (default: the lengths of `output_token_ids`) counts tokens the host lists do not have yet (async
        scheduling): the step index of seeds and min_new_tokens; rows needing the tokens themselves
        (penalties, multi-token bad words) must be complete.
        """
        if not len(params) == len(output_token_ids) == len(prompt_token_ids):
            raise ValueError("params, output_token_ids and prompt_token_ids must have one entry per row")
        if num_output_tokens is None:
            num_output_tokens = [len(out) for out in output_token_ids]
        floats: list[list[float]] = [[], [], [], [], [], []]
        temps, top_ps, min_ps, reps, pres, freqs = floats
        top_ks: list[int] = []
        seeds: list[int | None] = []
        steps: list[int] = []
        random_rows: list[int] = []
        seeded: list[tuple[int, int]] = []
        ban_rows: list[int] = []
        ban_toks: list[int] = []
        rep_rows: list[int] = []  # rows with a repetition penalty
        rep_lens: list[int] = []  # prompt + output length of each of those rows
        rep_chunks: list[Sequence[int] | np.ndarray] = []
        cnt_rows: list[int] = []  # rows with a presence or frequency penalty
        cnt_lens: list[int] = []  # output length of each of those rows
        cnt_chunks: list[Sequence[int] | np.ndarray] = []
        max_logprobs: int | None = None
        any_top_k = any_top_p = any_min_p = False

        rows = zip(params, output_token_ids, prompt_token_ids, num_output_tokens, strict=True)
        for i, (p, out, prompt, step) in enumerate(rows):
            seeds.append(p.seed)
            steps.append(step)
            temps.append(p.temperature)
            top_ks.append(p.top_k)
            top_ps.append(p.top_p)
            min_ps.append(p.min_p)
            reps.append(p.repetition_penalty)
            pres.append(p.presence_penalty)
            freqs.append(p.frequency_penalty)
            if not p.greedy:
                if p.seed is not None:
                    seeded.append((len(random_rows), derive_seed(p.seed, step)))
                random_rows.append(i)
                any_top_k |= p.top_k > 0
                any_top_p |= p.top_p < 1.0
                any_min_p |= p.min_p > 0.0
            if p.logprobs is not None:
                max_logprobs = max(max_logprobs or 0, p.logprobs)
            banned = _banned_ids(p, out, step)
            ban_rows.extend([i] * len(banned))
            ban_toks.extend(banned)
            if p.repetition_penalty != 1.0:
                rep_rows.append(i)
                rep_lens.append(len(prompt) + len(out))
                rep_chunks.append(prompt)
                rep_chunks.append(out)
            if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
                cnt_rows.append(i)
                cnt_lens.append(len(out))
                cnt_chunks.append(out)

        B = len(params)
        # One host-to-device copy for all float parameters; the fields are views of it.
        packed = host_to_device(floats, torch.float32, device).reshape(6, B)

        def longs(values: list) -> torch.Tensor:
            return host_to_device(values, torch.int64, device)

        return cls(
            temperature=packed[0],
            top_p=packed[1],
            min_p=packed[2],
            repetition_penalty=packed[3],
            presence_penalty=packed[4],
            frequency_penalty=packed[5],
            top_k=longs(top_ks),
            seeds=seeds,
            steps=steps,
            ban_ids=longs([ban_rows, ban_toks]) if ban_rows else None,
            repetition_ids=_row_token_pairs(rep_rows, rep_lens, rep_chunks, device) if sum(rep_lens) else None,
            output_ids=_row_token_pairs(cnt_rows, cnt_lens, cnt_chunks, device) if sum(cnt_lens) else None,
            random_rows=longs(random_rows) if 0 < len(random_rows) < B else None,
            seeded=seeded,
            max_logprobs=max_logprobs,
            all_greedy=not random_rows,
            all_random=len(random_rows) == B,
            any_top_k=any_top_k,
            any_top_p=any_top_p,
            any_min_p=any_min_p,
            any_penalty=bool(sum(rep_lens) or sum(cnt_lens)),
            num_unseeded=len(random_rows) - len(seeded),
        )


@dataclass(slots=True)
class SamplerOutput:
    token_ids: torch.Tensor  # [B] i64, sampled token per row
    logprobs: torch.Tensor | None  # [B] f32, raw logprob of the sampled token; None = no row asked
    top_logprob_ids: torch.Tensor | None  # [B, K] i64, K = max_logprobs, by logprob descending; None when K == 0
    top_logprobs: torch.Tensor | None  # [B, K] f32, raw logprobs matching top_logprob_ids


class Sampler:
    """Turns [B, V] logits into one token per row; see the module docstring for semantics.

    `generator` (on the logits' device) drives unseeded rows; None uses torch's global RNG.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self._seeded_generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        return self.forward(logits, batch)

    def forward(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        logits = logits.float()
        raw_logprobs = logits.log_softmax(dim=-1) if batch.max_logprobs is not None else None
        logits = self.process_logits(logits, batch)

        if batch.all_greedy:
            token_ids = logits.argmax(dim=-1)
        else:
            rows = batch.random_rows
            sub = logits if rows is None else logits.index_select(0, rows)
            sampled = self._sample(sub, batch)
            token_ids = sampled if rows is None else logits.argmax(dim=-1).index_copy_(0, rows, sampled)

        out = SamplerOutput(token_ids=token_ids, logprobs=None, top_logprob_ids=None, top_logprobs=None)
        if raw_logprobs is not None:
            out.logprobs = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
            k = min(batch.max_logprobs or 0, raw_logprobs.shape[-1])
            if k > 0:
                out.top_logprobs, out.top_logprob_ids = raw_logprobs.topk(k, dim=-1)
        return out

    def process_logits(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Apply bans and penalties: the logits greedy rows take the argmax of.

        Returns `logits` itself when nothing applies, else a new tensor; the caller's is never modified.
        """
        if batch.ban_ids is None and not batch.any_penalty:
            return logits
        logits = logits.clone()
        if batch.ban_ids is not None:
            _apply_bans(logits, batch.ban_ids)
        if batch.repetition_ids is not None:
            logits = _apply_repetition_penalty(logits, batch.repetition_ids, batch.repetition_penalty)
        if batch.output_ids is not None:
            _apply_presence_frequency(logits, batch.output_ids, batch)
        return logits

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Sample one token per row of `logits`, which holds exactly the non-greedy rows in order."""
        rows = batch.random_rows

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if rows is None else t.index_select(0, rows)

        logits = logits / pick(batch.temperature).unsqueeze(1)
        if batch.any_top_k or batch.any_top_p:
            logits = _apply_top_k_top_p(
                logits,
                pick(batch.top_k) if batch.any_top_k else None,
                pick(batch.top_p) if batch.any_top_p else None,
            )
        if not batch.any_min_p:
            return logits.sub_(self._noise(logits, batch).log_()).argmax(dim=-1)
        probs = logits.softmax(dim=-1)
        # Renormalisation after top-k/top-p scales all probs alike, so the ratio to the max is unchanged.
        threshold = probs.amax(dim=-1, keepdim=True) * pick(batch.min_p).unsqueeze(1)
        probs = probs.masked_fill_(probs < threshold, 0.0)
        return probs.div_(self._noise(probs, batch)).argmax(dim=-1)

    def _noise(self, probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Exp(1) noise shaped like `probs` (float32), never 0; seeded rows get their own deterministic stream."""
        q = torch.empty_like(probs)
        if batch.num_unseeded:
            q.exponential_(generator=self.generator)
        if batch.seeded:
            # One kernel launch per seeded row. Reseeding is host-side only: the generator's seed and
            # offset are read when the kernel is launched, so reusing one generator across rows is safe
            # and nothing waits for the device (this would not hold under CUDA graph capture).
            gen = self._seeded_generator(probs.device)
            row = torch.empty(probs.shape[-1], dtype=probs.dtype, device=probs.device)
            for pos, seed in batch.seeded:
                gen.manual_seed(seed)
                # Draw into a standalone [V] buffer so the stream cannot depend on the row's offset in q.
                q[pos].copy_(row.exponential_(generator=gen))
        # exponential_ can return exactly 0; 0/0 would be NaN, which argmax would pick.
        return q.clamp_min_(torch.finfo(q.dtype).tiny)

    def _seeded_generator(self, device: torch.device) -> torch.Generator:
        gen = self._seeded_generators.get(device)
        if gen is None:
            gen = self._seeded_generators[device] = torch.Generator(device=device)
        return gen


def _apply_bans(logits: torch.Tensor, ban_ids: torch.Tensor) -> None:
    rows, toks = ban_ids[0], ban_ids[1]
    vocab = logits.shape[-1]
    # Ids past the vocabulary (user stop ids, say) are ignored without a host sync: they add 0 to a
    # clamped column instead of -inf. Adding -inf to finite logits gives -inf, duplicates included.
    values = torch.where(toks < vocab, float("-inf"), 0.0).to(logits.dtype)
    logits.index_put_((rows, toks.clamp(max=vocab - 1)), values, accumulate=True)


def _apply_repetition_penalty(
    logits: torch.Tensor, repetition_ids: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)  # contiguous, for view(-1)
    # index_fill_ with a Python scalar; `seen[rows, ids] = True` copies a host tensor and syncs on CUDA.
    seen.view(-1).index_fill_(0, repetition_ids[0] * logits.shape[-1] + repetition_ids[1], True)
    p = penalty.unsqueeze(1)
    # HF RepetitionPenaltyLogitsProcessor: negative logits are multiplied, the rest divided.
    penalized = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalized, logits)


def _apply_presence_frequency(logits: torch.Tensor, output_ids: torch.Tensor, batch: SamplingBatch) -> None:
    vocab = logits.shape[-1]
    counts = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)  # contiguous, for view(-1)
    # Adding exact 1.0s: the counts are exact whatever order the atomics run in.
    ones = torch.ones(output_ids.shape[1], dtype=logits.dtype, device=logits.device)
    counts.view(-1).index_add_(0, output_ids[0] * vocab + output_ids[1], ones)
    logits -= batch.frequency_penalty.unsqueeze(1) * counts
    logits -= batch.presence_penalty.unsqueeze(1) * (counts > 0)


def _apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask to -inf all tokens outside each row's top-k, then outside its top-p nucleus.

    Works in sorted order so that exactly k tokens survive top-k even with ties; a stable descending
    sort puts the lowest id first among equal logits, as torch.argmax does, so top_k=1 and a tiny
    top_p both reproduce greedy exactly.
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    if top_k is not None:
        k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k).unsqueeze(1)
        ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
        sorted_logits.masked_fill_(ranks >= k, float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p: a token goes once the mass before it does.
        drop = mass_before >= top_p.unsqueeze(1)
        drop[:, 0] = False
        # Rows with top_p off must not lose tail tokens to rounding in the cumsum.
        drop &= (top_p < 1.0).unsqueeze(1)
        sorted_logits.masked_fill_(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
