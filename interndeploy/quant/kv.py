"""Online int8 / int4 KV cache (`quant_policy` 8 / 4, LMDeploy's flag): what a cache holds and its tensors.

Data-free: K and V are quantized when they are written (store_kvcache) and dequantized inside the
attention kernels; the scheme and layout are in `kernels/reference_kv.py`. Per token and kv head, one
of K or V costs

    quant_policy 0   D * sizeof(compute dtype)          bf16, D = 128: 256 B
    quant_policy 8   D     + 2 * sizeof(scale dtype)    128 + 4 = 132 B  (1.94x the tokens of bf16)
    quant_policy 4   D / 2 + 2 * sizeof(scale dtype)     64 + 4 =  68 B  (3.76x)

so the same `cache_max_entry_count` holds about 2x / 4x the blocks. The scale dtype is fp16 (bf16's 8
mantissa bits would put the zero point a good part of an int8 step off), fp32 when the model runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError

QUANT_POLICIES = {0: "off", 8: "int8", 4: "int4"}


@dataclass(frozen=True, slots=True)
class KVCacheLayout:
    quant_policy: int  # 0: values in the compute dtype; 8 / 4: int8 / int4 codes plus (scale, zero)
    head_dim: int  # D, elements per token and kv head
    compute_dtype: torch.dtype  # the model's dtype: what attention computes in and dequantizes to

    def __post_init__(self) -> None:
        if self.quant_policy not in QUANT_POLICIES:
            raise ConfigError(f"quant_policy must be 0, 4 or 8, got {self.quant_policy}")
        if self.quant_policy == 4 and self.head_dim % 2:
            raise ConfigError(f"quant_policy 4 packs two int4 values per byte and needs an even head_dim, "
                              f"got {self.head_dim}; use --quant-policy 8")

    @property
    def quantized(self) -> bool:
        return self.quant_policy != 0

    @property
    def cache_dtype(self) -> torch.dtype:
        """Element type of k_cache / v_cache."""
        return torch.uint8 if self.quantized else self.compute_dtype

    @property
    def cache_dim(self) -> int:
        """Last dim of k_cache / v_cache: D values or int8 codes, D / 2 bytes of two int4 codes."""
        return self.head_dim // 2 if self.quant_policy == 4 else self.head_dim

    @property
    def scale_dtype(self) -> torch.dtype:
        return torch.float32 if self.compute_dtype == torch.float32 else torch.float16

    @property
    def bytes_per_token_head(self) -> int:
        """Bytes one token of one kv head takes in one of the K / V caches, scale and zero included."""
        elem = torch.tensor([], dtype=self.cache_dtype).element_size()
        scales = 2 * torch.tensor([], dtype=self.scale_dtype).element_size() if self.quantized else 0
        return self.cache_dim * elem + scales

    @property
    def name(self) -> str:
        """The KV dtype as the memory table prints it: int8, int4, bfloat16, ..."""
        return QUANT_POLICIES[self.quant_policy] if self.quantized else str(self.compute_dtype).removeprefix("torch.")

    def describe(self) -> str:
        """The KV dtype for the memory table: `bfloat16`, or `int8 (+ fp16 scale/zero)`."""
        if not self.quantized:
            return self.name
        return f"{self.name} (+ {str(self.scale_dtype).removeprefix('torch.').replace('float', 'fp')} scale/zero)"

    def allocate(
        self, num_blocks: int, block_size: int, num_kv_heads: int, device: torch.device | str, *, zero: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k_cache, v_cache, k_scale_zero, v_scale_zero) of one layer; the scale tensors are empty when off.

        The scale tensors are [num_blocks, block_size, Hkv, 2] views of [num_blocks, Hkv, block_size, 2]
        storage: one kv head's (scale, zero) of a block are contiguous, so an attention tile of BLOCK_N
        tokens reads 4 * BLOCK_N bytes of them, not a 32-byte sector per token.
        """
        new = torch.zeros if zero else torch.empty
        shape = (num_blocks, block_size, num_kv_heads, self.cache_dim)
        k_cache = new(shape, dtype=self.cache_dtype, device=device)
        v_cache = new(shape, dtype=self.cache_dtype, device=device)
        if not self.quantized:
            return k_cache, v_cache, torch.tensor([], device=device), torch.tensor([], device=device)
        scales = [new((num_blocks, num_kv_heads, block_size, 2), dtype=self.scale_dtype, device=device).transpose(1, 2)
                  for _ in range(2)]
        return k_cache, v_cache, scales[0], scales[1]
