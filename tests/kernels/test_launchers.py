"""CPU-only: kernel modules import without Triton or CUDA, launchers reject bad inputs with a clear
ValueError, and the layers keep the torch reference on CPU."""

from __future__ import annotations

import importlib

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels._triton import reference_kernels, use_triton
from interndeploy.kernels.decode_attention import decode_attention, pick_num_splits
from interndeploy.kernels.prefill_attention import prefill_attention
from interndeploy.kernels.rotary import apply_rotary
from interndeploy.kernels.store_kvcache import store_kvcache

KERNELS = ["store_kvcache", "decode_attention", "prefill_attention", "rms_norm", "rotary", "silu_and_mul"]


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_modules_import_anywhere(name: str) -> None:
    importlib.import_module(f"interndeploy.kernels.{name}")


def test_cpu_tensors_use_the_reference() -> None:
    x = torch.randn(2, 8)
    assert not use_triton(x)
    with reference_kernels():
        assert not use_triton(x)


def test_layers_on_cpu_match_reference() -> None:
    from interndeploy.layers.activation import SiluAndMul
    from interndeploy.layers.layernorm import RMSNorm
    from interndeploy.layers.rotary import apply_rotary as layer_rotary

    x, r = torch.randn(3, 16), torch.randn(3, 16)
    norm = RMSNorm(16)
    torch.testing.assert_close(norm(x), reference.rms_norm(x, norm.weight, norm.eps))
    torch.testing.assert_close(norm(x, r)[1], x + r)
    torch.testing.assert_close(SiluAndMul()(x), reference.silu_and_mul(x))
    q, k, cos, sin = torch.randn(3, 4, 8), torch.randn(3, 2, 8), torch.randn(3, 4), torch.randn(3, 4)
    for a, b in zip(layer_rotary(q, k, cos, sin), reference.apply_rotary(q, k, cos, sin), strict=True):
        torch.testing.assert_close(a, b)


def test_launchers_reject_bad_shapes() -> None:
    cache = torch.zeros(4, 16, 2, 64, dtype=torch.bfloat16)
    q = torch.zeros(3, 8, 64, dtype=torch.bfloat16)
    tables, lens = torch.zeros(3, 4, dtype=torch.int32), torch.ones(3, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        decode_attention(torch.zeros(3, 7, 64, dtype=torch.bfloat16), cache, cache, tables, lens, 1.0)
    with pytest.raises(ValueError, match="block_tables must be"):
        decode_attention(q, cache, cache, tables.long(), lens, 1.0)
    with pytest.raises(ValueError, match="share one of"):
        decode_attention(q.half(), cache, cache, tables, lens, 1.0)
    with pytest.raises(ValueError, match="query_start_loc"):
        prefill_attention(q, cache, cache, torch.zeros(3, dtype=torch.int32), lens, tables, 1, 1.0)
    with pytest.raises(ValueError, match="do not match the cache"):
        store_kvcache(torch.zeros(3, 2, 32), torch.zeros(3, 2, 32), cache, cache, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="cos must be"):
        apply_rotary(q, q[:, :2], torch.zeros(3, 64), torch.zeros(3, 32))


def test_split_count_is_static() -> None:
    """Splits depend only on shapes: a captured graph keeps working whatever the sequence lengths."""
    cpu = torch.device("cpu")
    assert pick_num_splits(8, 64, cpu) == 1  # short context: one split, no reduce
    assert pick_num_splits(1, 1 << 20, cpu) == 2  # two waves of one "SM"


def test_launchers_reject_bad_quantized_caches() -> None:
    q = torch.zeros(3, 8, 64, dtype=torch.bfloat16)
    codes = torch.zeros(4, 16, 2, 32, dtype=torch.uint8)  # int4: D / 2 bytes
    tables, lens = torch.zeros(3, 4, dtype=torch.int32), torch.ones(3, dtype=torch.int32)
    with pytest.raises(ValueError, match="int4 KV cache needs k_scale_zero"):
        decode_attention(q, codes, codes, tables, lens, 1.0)
    bf16_scales = torch.zeros(4, 16, 2, 2, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="fp16 or fp32"):
        prefill_attention(q, codes, codes, torch.arange(4, dtype=torch.int32), lens, tables, 1, 1.0,
                          k_scale_zero=bf16_scales, v_scale_zero=bf16_scales)
    scales = torch.zeros(4, 16, 2, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="do not match the cache"):
        store_kvcache(torch.zeros(3, 2, 48), torch.zeros(3, 2, 48), codes, codes, torch.zeros(3, dtype=torch.long),
                      scales, scales)
    with pytest.raises(ValueError, match=r"k_scale_zero must be \(4, 16, 2, 2\)"):
        store_kvcache(torch.zeros(3, 2, 64), torch.zeros(3, 2, 64), codes, codes, torch.zeros(3, dtype=torch.long),
                      scales[:, :8], scales)
