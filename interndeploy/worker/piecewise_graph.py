"""Eager steps (prefill, chunked prefill beside decode rows) as CUDA graphs split at attention.

A prefill step launches about ten kernels per layer from Python, and for a few hundred tokens the host takes
longer to launch them than the GPU to run them (InternLM2.5-7B on an H100: ~22 ms of launches for ~20 ms of
kernels at 920 tokens), so time to first token was the host's. Everything between two attention calls
depends on the number of tokens only, so it is captured once per token-count bucket, as vLLM's piecewise
graphs do. Attention, whose grid follows the batch's sequence lengths, runs eagerly between the pieces:

    replay(piece 0) -> attention(layer 0) -> replay(piece 1) -> ... -> attention(layer L-1) -> replay(piece L)

piece 0 is the embedding up to layer 0's KV store; piece i runs layer i-1's o_proj up to layer i's KV store;
the last one ends with the final norm. Each piece copies its q into a static buffer that attention reads, and
the next one reads attention's output from another; the pieces' own tensors come from one memory pool that
all buckets share (captured largest first), so no activation outlives its bucket's capture.

A step of n tokens replays the smallest bucket >= n. Rows n.. are padding: input id 0, position 0, slot -1
(the KV store skips it); every kernel of a piece computes each row on its own, so padding never reaches a
real row, and attention sees the n real rows only. A GEMM's kernel (cuBLAS's choice, or the batch-1 GEMV)
depends on its row count, and with it the rounding: so eager steps of the same kind are padded to the same
buckets (`pad_step`), and CUDA graphs never change what a step computes.

With tensor parallelism every rank captures and replays the same buckets in the same order, so the
all-reduces inside the pieces pair up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import tp_rank_and_size
from .cuda_graph import token_input_buffers
from .forward_context import AttentionMetadata, forward_context

logger = logging.getLogger("interndeploy")

# padding costs at most 64 tokens up to 1024 (4x230-token prompts: 960, not 1024), 128 above
_BUCKETS = (16, 32, 64, 96, 128, 192, *range(256, 1024, 64), *range(1024, 2049, 128))


def token_buckets(max_tokens: int) -> list[int]:
    """The step sizes (tokens) graphs are captured for, up to `max_tokens` (at most the largest bucket)."""
    return sorted({b for b in _BUCKETS if b < max_tokens} | {min(max_tokens, _BUCKETS[-1])})


def bucket_for(buckets: list[int], num_tokens: int) -> int | None:
    """The smallest bucket holding `num_tokens`, or None when the step is larger than them all."""
    return next((b for b in buckets if b >= num_tokens), None)


def pad_step(input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, size: int
             ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """An eager step padded to `size` tokens as a graph replay pads it (id 0, position 0, slot -1)."""
    pad = size - input_ids.shape[0]
    if pad <= 0:
        return input_ids, positions, meta
    meta = replace(meta, slot_mapping=F.pad(meta.slot_mapping, (0, pad), value=-1),
                   token_seq_lens=F.pad(meta.token_seq_lens, (0, pad), value=1))
    return F.pad(input_ids, (0, pad)), F.pad(positions, (0, pad)), meta


@dataclass
class _Piecewise:
    """One bucket: graphs[i] runs before attention[i] (the layer, its static q and output buffers); the last
    graph has no attention after it."""

    graphs: list[torch.cuda.CUDAGraph] = field(default_factory=list)
    attention: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class _CaptureSession:
    """Active while the model's forward is captured (or warmed up): the attention layers hand over to it."""

    def __init__(self, owner: PiecewiseCudaGraphs, tokens: int, capture: bool) -> None:
        self.owner = owner
        self.tokens = tokens
        self.capture = capture
        self.open = False  # a graph's capture has begun and not ended
        self.result = _Piecewise()

    def begin(self) -> None:
        if self.capture:
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=self.owner.pool, capture_error_mode=self.owner.capture_mode)
            self.result.graphs.append(graph)
            self.open = True

    def end(self) -> None:
        if self.capture:
            self.open = False
            self.result.graphs[-1].capture_end()

    def abandon(self) -> None:
        """After a failure inside the forward: end the open capture, so the stream leaves capture mode."""
        if self.capture and self.open:
            self.open = False
            try:
                self.result.graphs[-1].capture_end()
            except Exception:  # noqa: BLE001 - the capture is invalid anyway; only the stream state matters
                pass

    def split(self, layer: nn.Module, q: torch.Tensor) -> torch.Tensor:
        """At an attention layer: q [Tb, Hq, D] goes to the static buffer, the piece ends, the next begins;
        returns the static buffer that attention's output will be in at replay."""
        q_buf, out_buf = self.owner.buffers(q)
        q_buf[: self.tokens].copy_(q)
        self.end()
        self.result.attention.append((layer, q_buf, out_buf))
        self.begin()
        return out_buf[: self.tokens]


_SESSION: _CaptureSession | None = None


def capture_session() -> _CaptureSession | None:
    """The piecewise capture in progress, if any (the attention layer asks)."""
    return _SESSION


@contextmanager
def _session(session: _CaptureSession) -> Iterator[_CaptureSession]:
    global _SESSION
    prev, _SESSION = _SESSION, session
    try:
        yield session
    finally:
        _SESSION = prev


class PiecewiseCudaGraphs:
    def __init__(self, model: nn.Module, max_tokens: int, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.buckets = token_buckets(max_tokens)
        self.max_tokens = self.buckets[-1]
        self.input_ids, self.positions, self.slot_mapping, self.token_seq_lens = token_input_buffers(
            self.max_tokens, device
        )
        self.pool = torch.cuda.graph_pool_handle()
        # thread_local: NCCL's watchdog thread may query its events while a tp rank captures
        self.capture_mode = "thread_local" if tp_rank_and_size()[1] > 1 else "global"
        self._qo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (Hq, D, dtype) -> (q, attention out)
        self.hidden: torch.Tensor | None = None  # [max_tokens, H]: the last piece's output
        self.pieces: dict[int, _Piecewise] = {}
        self.replays = 0  # steps run through the graphs (tests and stats)

    def buffers(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (q.shape[1], q.shape[2], q.dtype)
        if key not in self._qo:  # outside the graphs' pool: shared by every layer and bucket
            shape = (self.max_tokens, *q.shape[1:])
            self._qo[key] = (torch.zeros(shape, dtype=q.dtype, device=self.device),
                             torch.zeros(shape, dtype=q.dtype, device=self.device))
        return self._qo[key]

    def _meta(self, n: int) -> AttentionMetadata:
        """What the pieces may read: the slots of the KV store and the tokens' sequence lengths (dynamic
        rotary). The rest is attention's, which runs outside the graphs: empty, so a read fails loudly."""
        empty = torch.empty(0, dtype=torch.int32, device=self.device)
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:n], query_start_loc=empty, seq_lens=empty,
            block_tables=empty.view(0, 0), token_seq_lens=self.token_seq_lens[:n], query_lens_host=[],
            seq_lens_host=[], max_query_len=0, max_seq_len=0, is_decode_only=False,
        )  # fmt: skip

    def _forward(self, n: int, capture: bool) -> _Piecewise:
        session = _CaptureSession(self, n, capture)
        with _session(session), forward_context(self._meta(n)):
            session.begin()
            try:
                hidden = self.model(self.input_ids[:n], self.positions[:n])
                if self.hidden is None:
                    self.hidden = torch.zeros(self.max_tokens, hidden.shape[-1], dtype=hidden.dtype,
                                              device=self.device)
                self.hidden[:n].copy_(hidden)
            except BaseException:
                session.abandon()
                raise
            session.end()
        return session.result

    @torch.inference_mode()
    def capture(self) -> None:
        self.slot_mapping.fill_(-1)  # the warm-up and the capture write nothing to the cache
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for n in reversed(self.buckets):  # largest first: the smaller buckets reuse its pool memory
                self._forward(n, capture=False)  # warm-up: kernels compiled, cuBLAS handles made
                torch.cuda.synchronize(self.device)
                self.pieces[n] = self._forward(n, capture=True)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # the warm-ups' activations, cached for the side stream
        logger.info("captured piecewise CUDA graphs for steps of up to %s tokens (%d buckets)", self.max_tokens,
                    len(self.buckets))

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """The step's hidden states [n, H]: a view of a static buffer, valid until the next replay."""
        n = input_ids.shape[0]
        b = bucket_for(self.buckets, n)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.token_seq_lens[:n].copy_(meta.token_seq_lens, non_blocking=True)
        if b > n:
            self.input_ids[n:b].zero_()
            self.positions[n:b].zero_()
            self.slot_mapping[n:b].fill_(-1)
            self.token_seq_lens[n:b].fill_(1)
        piecewise = self.pieces[b]
        with forward_context(meta):
            for graph, (layer, q_buf, out_buf) in zip(piecewise.graphs, piecewise.attention, strict=False):
                graph.replay()
                layer.attend(q_buf[:n], meta, out_buf[:n])
            piecewise.graphs[-1].replay()
        self.replays += 1
        return self.hidden[:n]

