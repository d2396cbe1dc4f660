"""Engine flags shared by `chat` and `serve api_server`, with LMDeploy's names and defaults."""

from __future__ import annotations

import argparse

from ..config import ChatTemplateConfig, ConfigError, EngineConfig, GenerationConfig


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--backend", choices=["pytorch", "turbomind"], default="turbomind",
                   help="accepted for LMDeploy compatibility; both mean interndeploy's engine")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs (one process each)")
    g.add_argument("--dp", type=int, default=1,
                   help="data-parallel engines, one api_server each behind `serve proxy` (serve api_server only)")
    g.add_argument("--ep", type=int, default=1,
                   help="expert-parallel ranks for MoE models: equal to --tp (experts split over the tp ranks) "
                        "or to --dp with --tp 1 (the dp engines share the experts)")
    g.add_argument("--distributed-executor-backend", choices=["uni", "mp", "ray"], default=None,
                   help="how tp ranks start: mp (processes on this node; the default up to its GPU count) or "
                        "ray (actors on a running Ray cluster; the default beyond)")
    g.add_argument("--session-len", type=int, default=None, help="max prompt + output tokens per session")
    g.add_argument("--max-batch-size", type=int, default=None,
                   help="max sequences per step (default: by device as LMDeploy: 1024 on H100/H200, "
                        "384 on A100, 256 on other GPUs; 128 on CPU)")
    g.add_argument("--cache-max-entry-count", type=float, default=0.8,
                   help="fraction of the free memory after weights used for the KV cache")
    g.add_argument("--cache-block-seq-len", type=int, default=64, help="tokens per KV cache block")
    g.add_argument("--max-prefill-token-num", type=int, default=8192, help="prefill tokens per step")
    g.add_argument("--enable-prefix-caching", action="store_true", help="reuse KV blocks of shared prefixes")
    g.add_argument("--quant-policy", type=int, default=0, choices=[0, 4, 8], help="KV cache int4 (4) / int8 (8)")
    g.add_argument("--model-format", choices=["hf", "awq", "gptq", "fp8", "llama"], default=None,
                   help="weight format; detected from config.json when omitted")
    g.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--eager-mode", action="store_true", help="no CUDA graphs")
    g.add_argument("--prefill-graph-max-tokens", type=int, default=2048,
                   help="steps with prefill of up to this many tokens replay CUDA graphs split at attention; 0: eager")
    g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="schedule the next step while the GPUs run the current one (default: on with GPUs)")
    g.add_argument("--language-model-only", action="store_true", help="serve a multimodal model's language model only")
    g.add_argument("--chat-template", default=None, help="built-in template name or a JSON file")
    g.add_argument("--revision", default=None, help="Hugging Face cache revision")
    g.add_argument("--download-dir", default=None, help="accepted for LMDeploy compatibility")
    g.add_argument("--cpu-kv-budget-gib", type=float, default=2.0,
                   help="on CPU, the memory --cache-max-entry-count is a fraction of")
    g.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])


def _not_yet(flag: str, issue: str) -> ConfigError:
    return ConfigError(f"{flag} is not available yet in interndeploy ({issue}); run without it")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Build the EngineConfig; flags whose feature has not landed fail with one clear line."""
    if args.dp > 1 and not hasattr(args, "proxy_url"):
        raise ConfigError(f"--dp {args.dp} runs one api_server per engine behind a proxy: use "
                          f"`interndeploy serve api_server --dp {args.dp} --proxy-url URL`")
    if args.model_format not in (None, "hf", "awq", "fp8"):
        raise _not_yet(f"--model-format {args.model_format}", "quantized weights")
    from .dp_launcher import replica_rank

    return EngineConfig(
        tp=args.tp,
        dp=args.dp,
        ep=args.ep,
        dp_rank=replica_rank() or 0,
        nnodes=getattr(args, "nnodes", 1),
        node_rank=getattr(args, "node_rank", 0),
        distributed_executor_backend=args.distributed_executor_backend,
        session_len=args.session_len,
        max_batch_size=args.max_batch_size,
        cache_max_entry_count=args.cache_max_entry_count,
        block_size=args.cache_block_seq_len,
        max_prefill_token_num=args.max_prefill_token_num,
        enable_prefix_caching=args.enable_prefix_caching,
        quant_policy=args.quant_policy,
        model_format=args.model_format,
        dtype=args.dtype,
        device=args.device,
        eager_mode=args.eager_mode,
        prefill_graph_max_tokens=args.prefill_graph_max_tokens,
        async_scheduling=getattr(args, "async_scheduling", None),
        language_model_only=args.language_model_only,
        revision=args.revision,
        cpu_kv_budget_gib=args.cpu_kv_budget_gib,
    )


def chat_template_config_from_args(args: argparse.Namespace) -> ChatTemplateConfig | None:
    if not args.chat_template:
        return None
    from ..chat.templates import load_chat_template_config

    return load_chat_template_config(args.chat_template)


def add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)


def generation_config_from_args(args: argparse.Namespace, default: GenerationConfig) -> GenerationConfig:
    changes = {}
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.seed is not None:
        changes["random_seed"] = args.seed
    if any(k in changes for k in ("temperature", "top_p", "top_k")) and changes.get("temperature") != 0:
        changes["do_sample"] = True
    return default.replace(**changes) if changes else default
