"""User-facing configuration dataclasses, with LMDeploy's names and defaults.

`EngineConfig` says how the engine is built (parallelism, KV cache, batch limits);
`GenerationConfig` says how one request is decoded. `PytorchEngineConfig` and
`TurbomindEngineConfig` are the same class so LMDeploy code runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """A user-supplied setting is invalid; the message says which and why."""


@dataclass
class EngineConfig:
    tp: int = 1  # tensor-parallel ranks
    dp: int = 1  # data-parallel engine replicas
    ep: int = 1  # expert-parallel ranks: 1, or tp (EP inside one engine), or dp (with --tp 1: DP attention + EP)
    dp_rank: int = 0  # this engine's index among the dp engines (set by the dp launcher)
    nnodes: int = 1  # nodes of a dp deployment (a --tp engine spans nodes through Ray instead)
    node_rank: int = 0  # this node's index among them
    distributed_executor_backend: str | None = None  # uni | mp | ray; None: mp for tp > 1 on one node, else ray
    session_len: int | None = None  # max tokens (prompt + output) per sequence; None = model's max positions
    max_batch_size: int | None = None  # sequences per step; None = by device as LMDeploy (1024 on H100/H200)
    cache_max_entry_count: float = 0.8  # <1: fraction of free memory for KV; >=1: number of blocks
    block_size: int = 64  # tokens per KV block (LMDeploy: cache_block_seq_len)
    cache_block_seq_len: int | None = None  # alias of block_size, wins when given
    quant_policy: int = 0  # 0 off, 4/8 = int4/int8 KV cache
    max_prefill_token_num: int = 8192  # token budget per step for prefill chunks
    enable_prefix_caching: bool = False
    model_format: str | None = None  # hf | awq | fp8 | None (detect)
    dtype: str = "auto"  # auto | float16 | bfloat16 | float32
    device: str | None = None  # cuda | cpu | None (cuda when available)
    eager_mode: bool = False  # no CUDA graphs (decode graphs, piecewise graphs of the other steps)
    # steps that are not decode-only (prefill, chunked prefill with decode rows) of up to this many tokens replay
    # CUDA graphs split at attention (worker/piecewise_graph.py); 0 runs them eagerly
    prefill_graph_max_tokens: int = 2048
    # schedule and launch step n+1 while the device runs step n (vLLM's async scheduling, SGLang's overlap
    # schedule); None: on for a single-rank CUDA engine, off on the CPU (the forward runs on the scheduling
    # thread there, so nothing overlaps)
    async_scheduling: bool | None = None
    load_format: str = "auto"  # auto: read the checkpoint; dummy: random weights at the config's shapes
    language_model_only: bool = False  # serve a multimodal checkpoint (Intern-S1, InternVL) as its language model
    cpu_kv_budget_gib: float = 2.0  # on CPU, the "free memory" that cache_max_entry_count is a fraction of
    download_dir: str | None = None
    revision: str | None = None
    # accepted for LMDeploy compatibility, no effect here
    rope_scaling_factor: float = 0.0
    use_logn_attn: bool = False
    max_prefill_iters: int = 1
    num_tokens_per_iter: int = 0
    thread_safe: bool = False
    adapters: dict | None = None

    def __post_init__(self) -> None:
        if self.cache_block_seq_len is not None:
            self.block_size = self.cache_block_seq_len
        self.cache_block_seq_len = self.block_size
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.cache_max_entry_count <= 0:
            raise ConfigError(f"cache_max_entry_count must be > 0, got {self.cache_max_entry_count}")
        if self.quant_policy not in (0, 4, 8):
            raise ConfigError(f"quant_policy must be 0, 4 or 8, got {self.quant_policy}")
        if self.prefill_graph_max_tokens < 0:
            raise ConfigError(f"prefill_graph_max_tokens must be >= 0, got {self.prefill_graph_max_tokens}")
        if self.max_prefill_token_num <= 0:
            raise ConfigError(f"max_prefill_token_num must be > 0, got {self.max_prefill_token_num}")
        if self.session_len is not None and self.session_len <= 0:
            raise ConfigError(f"session_len must be > 0, got {self.session_len}")
        if self.max_batch_size is not None and self.max_batch_size <= 0:
            raise ConfigError(f"max_batch_size must be > 0, got {self.max_batch_size}")
        for name in ("tp", "dp", "ep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ep > 1 and self.ep != self.tp * self.dp:
            raise ConfigError(f"ep={self.ep} must equal tp x dp = {self.tp * self.dp}: experts are sharded over "
                              "the ranks of one tp engine, or over the dp engines")
        if self.ep > 1 and self.dp > 1 and self.tp > 1:
            raise ConfigError("dp and ep together need tp=1 (attention data-parallel, one GPU per engine)")
        if not 0 <= self.dp_rank < self.dp:
            raise ConfigError(f"dp_rank must be in [0, {self.dp}), got {self.dp_rank}")
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"node_rank must be in [0, nnodes={self.nnodes}), got {self.node_rank}")
        if self.dp % self.nnodes:
            raise ConfigError(f"nnodes={self.nnodes} must divide dp={self.dp}")
        if self.distributed_executor_backend not in (None, "uni", "mp", "ray"):
            raise ConfigError("distributed_executor_backend must be uni, mp or ray, "
                              f"got {self.distributed_executor_backend!r}")
        if self.distributed_executor_backend == "uni" and self.tp > 1:
            raise ConfigError(f"distributed_executor_backend uni runs one rank, but tp={self.tp}; use mp or ray")
        if self.load_format not in ("auto", "dummy"):
            raise ConfigError(f"load_format must be auto or dummy, got {self.load_format!r}")
        if self.dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise ConfigError(f"dtype must be auto, float16, bfloat16 or float32, got {self.dtype!r}")


PytorchEngineConfig = EngineConfig
TurbomindEngineConfig = EngineConfig


@dataclass
class GenerationConfig:
    """How to decode one request (LMDeploy's GenerationConfig fields and defaults)."""

    n: int = 1
    max_new_tokens: int = 512
    do_sample: bool = False  # False: greedy whatever the temperature
    top_p: float = 1.0
    top_k: int = 50
    min_p: float = 0.0
    temperature: float = 0.8
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    random_seed: int | None = None
    stop_words: list[str] | None = None
    bad_words: list[str] | None = None
    stop_token_ids: list[int] | None = None
    bad_token_ids: list[int] | None = None
    min_new_tokens: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logprobs: int | None = None  # number of top logprobs per generated token
    response_format: dict | None = None
    include_stop_str_in_output: bool = False
    logits_processors: list | None = None
    output_logits: str | None = None
    output_last_hidden_state: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"n must be a positive integer, got {self.n!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ConfigError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.min_new_tokens is not None and self.min_new_tokens < 0:
            raise ConfigError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ConfigError(f"logprobs must be between 0 and 20, got {self.logprobs}")

    def replace(self, **changes: Any) -> GenerationConfig:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return GenerationConfig(**values)


@dataclass
class ChatTemplateConfig:
    """Pick or adjust the chat template (LMDeploy's ChatTemplateConfig).

    `model_name` names a built-in template (internlm2, internlm3, intern-s1, qwen3);
    `meta_instruction`/`system` replace the default system text; `stop_words` add stops.
    """

    model_name: str | None = None
    system: str | None = None
    meta_instruction: str | None = None
    stop_words: list[str] | None = None
    capability: str | None = None
    model_path: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class VisionConfig:
    """Images and videos of a vision-language model (LMDeploy's VisionConfig, plus vLLM's --media-io-kwargs)."""

    max_batch_size: int = 1  # accepted for LMDeploy compatibility: the encoder batches a step's tiles itself
    thread_safe: bool = False  # accepted for LMDeploy compatibility
    media_io_kwargs: dict | None = None  # {"video": {"num_frames": 32, "fps": None}}: how video frames are sampled

