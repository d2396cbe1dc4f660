"""How many KV cache blocks fit, by LMDeploy's rule: `cache_max_entry_count` x free memory.

Seed 004's arithmetic for a 24 GB GPU: weights 14 GB, free 10 GB, x 0.8 = 8 GB of KV.
On CPU the "free memory" is a budget (`EngineConfig.cpu_kv_budget_gib`), and the cache
is never made larger than max_batch_size full-length sessions could use. Blocks are sized from
what a token really costs in the cache: int8 / int4 codes plus their scale and zero point with
`quant_policy` 8 / 4 (quant/kv.py), so the same budget holds about 2x / 4x the blocks of bf16.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .. import distributed
from ..config import ConfigError, EngineConfig
from ..quant.kv import KVCacheLayout

logger = logging.getLogger("interndeploy")

GiB = 1 << 30


@dataclass(slots=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype  # element type of the cache tensors (uint8 for int8 / int4 codes)
    block_size: int  # tokens per block
    num_blocks: int
    bytes_per_block: int  # K and V, all layers
    free_bytes: int  # the memory cache_max_entry_count was a fraction of
    basis: str  # where free_bytes came from
    layout: KVCacheLayout  # what one token-head holds: values, or int8 / int4 codes + (scale, zero)

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size


def model_kv_geometry(config: dict) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a language-model config.json."""
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return config["num_hidden_layers"], kv_heads, head_dim


def plan_kv_cache(
    config: dict, cfg: EngineConfig, device: torch.device, dtype: torch.dtype, session_len: int, max_batch_size: int
) -> KVCacheSpec:
    layers, kv_heads, head_dim = model_kv_geometry(config)
    _, tp = distributed.tp_rank_and_size()
    kv_heads = kv_heads * max(1, tp // kv_heads) // tp  # this rank's heads (replicated when tp > kv heads)
    layout = KVCacheLayout(cfg.quant_policy, head_dim, dtype)
    per_block = 2 * layers * cfg.block_size * kv_heads * layout.bytes_per_token_head
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, _ = torch.cuda.mem_get_info(device)
        basis = f"free {torch.cuda.get_device_name(device)} memory after weights"
    else:
        free = int(cfg.cpu_kv_budget_gib * GiB)
        basis = f"CPU budget cpu_kv_budget_gib={cfg.cpu_kv_budget_gib}"
    if cfg.cache_max_entry_count >= 1:
        num_blocks = int(cfg.cache_max_entry_count)
        basis = "cache_max_entry_count >= 1 is a block count"
    else:
        num_blocks = int(free * cfg.cache_max_entry_count) // per_block
        if device.type != "cuda":
            num_blocks = min(num_blocks, max_batch_size * -(-session_len // cfg.block_size))
    num_blocks = distributed.all_reduce_min_int(num_blocks)  # every rank holds the same blocks
    if num_blocks < 1:
        raise ConfigError(
            f"no room for the KV cache: {free / GiB:.2f} GiB free x cache_max_entry_count "
            f"{cfg.cache_max_entry_count} < one block of {per_block} bytes; raise --cache-max-entry-count"
        )
    return KVCacheSpec(
        layers, kv_heads, head_dim, layout.cache_dtype, cfg.block_size, num_blocks, per_block, free, basis, layout
    )


def memory_report(weight_bytes: int, kv: KVCacheSpec, device: torch.device, weights_note: str = "") -> str:
    """The start-up table: weights, KV cache and the rest, as seed 004 computes by hand."""
    rows = [("weights", f"{weight_bytes / GiB:.3f} GiB", weights_note)]
    kv_dtype = kv.layout.describe()
    if kv.layout.quantized:  # seed 004: int4 holds 4x the tokens of bf16 in the same memory
        plain = KVCacheLayout(0, kv.head_dim, kv.layout.compute_dtype)
        kv_dtype += f", {plain.bytes_per_token_head / kv.layout.bytes_per_token_head:.2f}x the tokens of {plain.name}"
    rows.append(
        (
            "kv cache",
            f"{kv.total_bytes / GiB:.3f} GiB",
            f"{kv.num_blocks} blocks x {kv.block_size} tokens = {kv.num_tokens} tokens, "
            f"{kv_dtype}, {kv.bytes_per_block} B/block; "
            f"= cache_max_entry_count x {kv.free_bytes / GiB:.2f} GiB ({kv.basis})",
        )
    )
    if device.type == "cuda":
        other = torch.cuda.memory_reserved(device) - weight_bytes - kv.total_bytes
        rows.append(("other", f"{max(other, 0) / GiB:.3f} GiB", "activations, CUDA context not counted"))
    else:
        rows.append(("other", "-", "CPU: activations allocated per step"))
    width = max(len(r[1]) for r in rows)
    lines = [f"memory on {device}:"]
    lines += [f"  {name:<9} {size:>{width}}  {note}".rstrip() for name, size, note in rows]
    return "\n".join(lines)
