"""Runs the model for one scheduled step: builds the flattened batch, runs forward, samples.

Owns the model, the paged KV cache tensors and the sampler. One per rank. `launch()` returns as soon as
the step is queued on the device; it keeps the step's sampled-token tensor so that the next step can
take a sequence's pending token from it on the device (async scheduling).
"""

from __future__ import annotations

import logging
import time

import torch

from ..config import EngineConfig
from ..distributed import tp_broadcast, tp_rank_and_size
from ..engine.scheduler import SchedulerOutput
from ..layers.attention import Attention
from ..layers.rotary import RotaryEmbedding
from ..model_dir import ModelInfo
from ..models.loader import init_dummy_weights, load_weights
from ..models.registry import get_model_class
from ..quant import awq_tinygemm
from ..quant.formats import linear_methods, resolve_weight_format
from .async_output import AsyncStepOutput, ModelRunnerOutput, TokenLogprobs
from .cuda_graph import DecodeCudaGraphs
from .forward_context import forward_context
from .guided_decoding import GrammarBackend
from .kv_cache import KVCacheSpec, plan_kv_cache
from .piecewise_graph import PiecewiseCudaGraphs, bucket_for, pad_step, token_buckets
from .sampler import Sampler, SamplingBatch
from .step_inputs import StepInputs, host_to_device
from .vision import VisionRunner, build_vision_tower

logger = logging.getLogger("interndeploy")


__all__ = ["ModelRunner", "ModelRunnerOutput", "TokenLogprobs", "pick_device", "pick_dtype"]


def _piecewise_ok(cfg: EngineConfig) -> bool:
    """Piecewise graphs need every collective of a step to be capturable: tensor parallelism's all-reduces
    are; expert parallelism's all-to-all (token counts known on the host) and DP engines' lockstep are not."""
    return cfg.dp == 1 and cfg.ep == 1


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, config: dict, device: torch.device, weight_format: str = "hf") -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu":
        return torch.float32  # reference path; bf16 matmuls are slow on most CPUs
    declared = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(declared)
    if dtype in (None, torch.float32) or (weight_format == "awq" and awq_tinygemm.kernel_available(device)):
        # AWQ checkpoints are fp16, but torch's int4 kernel (decode) computes in bf16: running the model in
        # bf16 saves two casts per linear layer (a 7B decode step on an H100: 3.07 ms, 3.89 in fp16);
        # --dtype float16 keeps fp16
        dtype = torch.bfloat16
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return dtype


class ModelRunner:
    def __init__(self, info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.weight_format = resolve_weight_format(info.config, cfg.model_format, info.path, cfg.load_format == "dummy")
        self.dtype = pick_dtype(cfg.dtype, info.config, self.device, self.weight_format)
        model_cls = get_model_class(info.config.get("architectures") or [])
        t0 = time.perf_counter()
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
        logger.info("model built and %s weights in %.1f s on %s", "random" if cfg.load_format == "dummy" else "loaded",
                    time.perf_counter() - t0, self.device)
        for module in self.model.modules():  # session_len may exceed max_position_embeddings
            if isinstance(module, RotaryEmbedding):
                module.reserve_positions(session_len)
        # the vision tower of a multimodal checkpoint (single-rank engines: TP workers get no input embeddings)
        self.vision: VisionRunner | None = None
        if info.serve_vision and cfg.tp == 1:
            self.vision = VisionRunner(build_vision_tower(info, self.dtype, self.device, cfg.load_format == "dummy"))
        tensors = [*self.model.parameters(), *self.model.buffers()]  # buffers: repacked weights, rotary tables
        self.weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
        self.weight_bytes += self.vision.weight_bytes if self.vision is not None else 0
        self.sampler = Sampler()
        self.grammar: GrammarBackend | None = None  # set by the engine; masks logits of guided sequences
        self.block_size = cfg.block_size
        self.kv: KVCacheSpec = plan_kv_cache(info.config, cfg, self.device, self.dtype, session_len, max_batch_size)
        self._attach_kv_cache()
        # the last launched step's sampled tokens [S] (device) and seq_id -> row: where pending tokens are
        self._prev_tokens: torch.Tensor | None = None
        self._prev_rows: dict[int, int] = {}
        self.graphs: DecodeCudaGraphs | None = None
        if self.device.type == "cuda" and not cfg.eager_mode:
            max_blocks = -(-session_len // self.block_size)
            t0 = time.perf_counter()
            self.graphs = DecodeCudaGraphs(self.model, max_batch_size, max_blocks, self.block_size, self.device)
            self.graphs.capture()
            logger.info("decode CUDA graphs captured in %.1f s", time.perf_counter() - t0)
        # steps that are not decode-only run padded to token buckets, in graphs or (eager mode) not
        self.step_buckets: list[int] = []
        if self.device.type == "cuda" and cfg.prefill_graph_max_tokens > 0 and _piecewise_ok(cfg):
            self.step_buckets = token_buckets(cfg.prefill_graph_max_tokens)
        self.piecewise: PiecewiseCudaGraphs | None = None
        if self.graphs is not None and self.step_buckets:
            t0 = time.perf_counter()
            try:
                self.piecewise = PiecewiseCudaGraphs(self.model, cfg.prefill_graph_max_tokens, self.device)
                self.piecewise.capture()
                logger.info("piecewise CUDA graphs captured in %.1f s", time.perf_counter() - t0)
            except RuntimeError as e:  # a layer that syncs with the host cannot be captured: prefill stays eager
                if cfg.tp > 1:
                    raise  # every rank must make the same choice; a failure is theirs all the same
                logger.warning("prefill steps stay eager: capturing them failed (%s)", str(e).splitlines()[0][:200])
                self.piecewise, self.step_buckets = None, []
                torch.cuda.synchronize(self.device)

    def receive_sampled(self, num_rows: int) -> None:
        """A tensor-parallel worker's half of rank 0's token broadcast after a step that sampled `num_rows`."""
        tokens = torch.empty(num_rows, dtype=torch.int64, device=self.device)
        self._prev_tokens = tp_broadcast(tokens)

    def close(self) -> None:
        """Drop the decode CUDA graphs (and the collectives captured in them) once the device is idle:
        before the process group goes, so NCCL's teardown finds no captured work."""
        if self.graphs is not None:
            torch.cuda.synchronize(self.device)
            self.graphs = None

    @property
    def num_blocks(self) -> int:
        return self.kv.num_blocks

    def _attach_kv_cache(self) -> None:
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        assert len(layers) == self.kv.num_layers, f"{len(layers)} attention layers, KV planned {self.kv.num_layers}"
        # torch.empty: untouched CPU pages cost nothing until written; attention reads only written slots
        for layer in layers:  # k/v caches, and their scales and zero points when int8 / int4 (else empty)
            layer.k_cache, layer.v_cache, layer.k_scale_zero, layer.v_scale_zero = self.kv.layout.allocate(
                self.kv.num_blocks, self.block_size, self.kv.num_kv_heads, self.device
            )

    @torch.inference_mode()
    def run_step(self, step: StepInputs, input_embeds: torch.Tensor | None = None) -> torch.Tensor | None:
        """Forward one step on this rank -> logits [S, V] of the sampling rows (None when none samples).
        Every tensor-parallel rank runs it with the same `step`: the layers' collectives pair up.
        `input_embeds` [T, H] replaces the embedding of the input ids (image/video features spliced in)."""
        meta, input_ids, positions, last_index = step.to_device(self.device, self.block_size, self._prev_tokens)
        num_tokens = input_ids.shape[0]
        # a step that is not decode-only runs at its token bucket's size: in the piecewise graphs, or padded
        size = None if input_embeds is not None or meta.is_decode_only else bucket_for(self.step_buckets, num_tokens)
        if input_embeds is None and self.graphs is not None and self.graphs.can_run(meta):
            hidden, logits = self.graphs.run(input_ids, positions, meta)
            if len(last_index) == len(hidden) and last_index[-1] == len(hidden) - 1:
                return logits  # every row samples (last_index is increasing): the graph's own LM head
        elif size is not None and self.piecewise is not None:
            hidden = self.piecewise.run(input_ids, positions, meta)
        else:
            if size is not None:  # eager mode: the same GEMM shapes as the graphs
                input_ids, positions, meta = pad_step(input_ids, positions, meta, size)
            with forward_context(meta):
                if input_embeds is None:
                    hidden = self.model(input_ids, positions)[:num_tokens]
                else:
                    hidden = self.model(input_ids, positions, input_embeds)
        if not last_index:
            return None
        return self.model.compute_logits(hidden[host_to_device(last_index, torch.int64, self.device)])

    def _vision_embeds(self, sched: SchedulerOutput, step: StepInputs) -> torch.Tensor | None:
        """The hook for images and videos: input embeddings with their vision features at their positions
        (worker/vision.py), or None when the step reaches no media."""
        if self.vision is None:
            return None
        embeds = self.vision.input_embeds(sched, step.input_ids, self.model)
        if embeds is not None and step.deferred:  # those rows embedded placeholder ids: embed the real tokens
            rows = host_to_device(step.deferred_rows, torch.int64, self.device)
            tokens = self.model.embed_input_ids(self._prev_tokens.index_select(0, rows))
            embeds.index_copy_(0, host_to_device(step.deferred, torch.int64, self.device), tokens.to(embeds.dtype))
        return embeds

    def execute(self, sched: SchedulerOutput, step: StepInputs | None = None) -> ModelRunnerOutput:
        """Run `sched` (`step`: its inputs, when the executor already built them to send), sample, and wait."""
        return self.launch(sched, step).get()

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput, step: StepInputs | None = None) -> AsyncStepOutput:
        """Queue `sched` on the device (forward, sampling, copy of the tokens to the host) without waiting.

        A sequence's pending token (sampled by the previous launch) is read from that launch's tokens.
        """
        samplers = [item.seq for item in sched.scheduled if item.samples]
        if sched.is_empty:
            return AsyncStepOutput.done(ModelRunnerOutput())
        step = step or StepInputs.from_scheduler_output(sched, self._prev_rows)
        logits = self.run_step(step, self._vision_embeds(sched, step))
        if logits is None or not samplers:
            return AsyncStepOutput.done(ModelRunnerOutput())
        if self.grammar is not None:
            self.grammar.mask_logits(logits, samplers)
        batch = SamplingBatch.build(
            [s.params for s in samplers],
            [s.output_token_ids for s in samplers],
            [s.prompt_token_ids for s in samplers],
            self.device,
            num_output_tokens=[s.num_output_tokens + s.num_pending_tokens for s in samplers],
        )
        result = self.sampler(logits, batch)
        if tp_rank_and_size()[1] > 1:  # the other ranks take pending input ids from these tokens too
            tp_broadcast(result.token_ids)
        self._prev_tokens = result.token_ids
        self._prev_rows = {seq.seq_id: row for row, seq in enumerate(samplers)}
        return AsyncStepOutput.start(
            [s.seq_id for s in samplers],
            [s.params.logprobs for s in samplers],
            result.token_ids,
            result.logprobs,
            result.top_logprob_ids,
            result.top_logprobs,
        )
