"""Runs the model for one scheduled step: builds the flattened batch, runs forward, samples.

Owns the model, the paged KV cache tensors and the sampler. One per rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..config import EngineConfig
from ..engine.scheduler import SchedulerOutput
from ..layers.attention import Attention
from ..layers.rotary import RotaryEmbedding
from ..model_dir import ModelInfo
from ..models.loader import init_dummy_weights, load_weights
from ..models.registry import get_model_class
from ..quant.formats import linear_methods, resolve_weight_format
from .cuda_graph import DecodeCudaGraphs
from .forward_context import AttentionMetadata, forward_context
from .guided_decoding import GrammarBackend
from .kv_cache import KVCacheSpec, plan_kv_cache
from .sampler import Sampler, SamplingBatch

logger = logging.getLogger("interndeploy")


@dataclass(slots=True)
class TokenLogprobs:
    logprob: float  # log-probability of the sampled token
    top: list[tuple[int, float]]  # (token id, logprob) of the top-N tokens, best first


@dataclass(slots=True)
class ModelRunnerOutput:
    sampled: dict[int, int] = field(default_factory=dict)  # seq_id -> sampled token id
    logprobs: dict[int, TokenLogprobs] = field(default_factory=dict)  # seq_id -> logprobs, when asked


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, config: dict, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu":
        return torch.float32  # reference path; bf16 matmuls are slow on most CPUs
    declared = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(declared)
    if dtype in (None, torch.float32):
        dtype = torch.bfloat16
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return dtype


class ModelRunner:
    def __init__(self, info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, info.config, self.device)
        model_cls = get_model_class(info.config.get("architectures") or [])
        self.weight_format = resolve_weight_format(info.config, cfg.model_format, info.path, cfg.load_format == "dummy")
        prev_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device), linear_methods(info.config, self.weight_format):
                self.model = model_cls(info.hf_config)
        finally:
            torch.set_default_dtype(prev_dtype)
        if cfg.load_format == "dummy":
            init_dummy_weights(self.model)
        else:
            load_weights(self.model, info.path, self.dtype, info.weight_prefixes)
        self.model.eval()
        for module in self.model.modules():  # session_len may exceed max_position_embeddings
            if isinstance(module, RotaryEmbedding):
                module.reserve_positions(session_len)
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.sampler = Sampler()
        self.grammar: GrammarBackend | None = None  # set by the engine; masks logits of guided sequences
        self.block_size = cfg.block_size
        self.kv: KVCacheSpec = plan_kv_cache(info.config, cfg, self.device, self.dtype, session_len, max_batch_size)
        self._attach_kv_cache()
        self.graphs: DecodeCudaGraphs | None = None
        if self.device.type == "cuda" and not cfg.eager_mode:
            max_blocks = -(-session_len // self.block_size)
            self.graphs = DecodeCudaGraphs(self.model, max_batch_size, max_blocks, self.block_size, self.device)
            self.graphs.capture()

    @property
    def num_blocks(self) -> int:
        return self.kv.num_blocks

    def _attach_kv_cache(self) -> None:
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        assert len(layers) == self.kv.num_layers, f"{len(layers)} attention layers, KV planned {self.kv.num_layers}"
        shape = (self.kv.num_blocks, self.block_size, self.kv.num_kv_heads, self.kv.head_dim)
        # torch.empty: untouched CPU pages cost nothing until written; attention reads only written slots
        for layer in layers:
            layer.k_cache = torch.empty(shape, dtype=self.kv.dtype, device=self.device)
            layer.v_cache = torch.empty(shape, dtype=self.kv.dtype, device=self.device)

    def _prepare(self, sched: SchedulerOutput) -> tuple[AttentionMetadata, torch.Tensor, torch.Tensor, list[int]]:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        token_seq_lens: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        query_lens: list[int] = []
        last_index: list[int] = []  # flattened index of each sampling sequence's last token
        for item in sched.scheduled:
            seq = item.seq
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + item.num_new_tokens
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            token_seq_lens.extend([end] * (end - start))
            query_start.append(query_start[-1] + end - start)
            seq_lens.append(end)
            query_lens.append(end - start)
            if item.samples:
                last_index.append(len(input_ids) - 1)
        max_blocks = max(len(item.seq.block_table) for item in sched.scheduled)
        tables = [item.seq.block_table + [0] * (max_blocks - len(item.seq.block_table)) for item in sched.scheduled]

        def tensor(x: list, dtype: torch.dtype) -> torch.Tensor:
            t = torch.tensor(x, dtype=dtype, pin_memory=self.device.type == "cuda")
            return t.to(self.device, non_blocking=True)

        meta = AttentionMetadata(
            slot_mapping=tensor(slots, torch.int64),
            query_start_loc=tensor(query_start, torch.int32),
            seq_lens=tensor(seq_lens, torch.int32),
            block_tables=tensor(tables, torch.int32),
            token_seq_lens=tensor(token_seq_lens, torch.int64),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            is_decode_only=max(query_lens) == 1,
        )
        return meta, tensor(input_ids, torch.int64), tensor(positions, torch.int64), last_index

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        out = ModelRunnerOutput()
        if sched.is_empty:
            return out
        meta, input_ids, positions, last_index = self._prepare(sched)
        if self.graphs is not None and self.graphs.can_run(meta):
            hidden = self.graphs.run(input_ids, positions, meta)
        else:
            with forward_context(meta):
                hidden = self.model(input_ids, positions)
        samplers = [item.seq for item in sched.scheduled if item.samples]
        if not samplers:
            return out
        logits = self.model.compute_logits(hidden[torch.tensor(last_index, device=self.device)])
        if self.grammar is not None:
            self.grammar.mask_logits(logits, samplers)
        batch = SamplingBatch.build(
            [s.params for s in samplers],
            [s.output_token_ids for s in samplers],
            [s.prompt_token_ids for s in samplers],
            self.device,
        )
        result = self.sampler(logits, batch)
        tokens = result.token_ids.tolist()
        for seq, token in zip(samplers, tokens, strict=True):
            out.sampled[seq.seq_id] = token
        if result.logprobs is not None:
            chosen = result.logprobs.tolist()
            top_ids = result.top_logprob_ids.tolist() if result.top_logprob_ids is not None else None
            top_lps = result.top_logprobs.tolist() if result.top_logprobs is not None else None
            for row, seq in enumerate(samplers):
                n = seq.params.logprobs
                if n is None:
                    continue
                top = list(zip(top_ids[row][:n], top_lps[row][:n], strict=True)) if top_ids and n else []
                out.logprobs[seq.seq_id] = TokenLogprobs(chosen[row], top)
        return out
