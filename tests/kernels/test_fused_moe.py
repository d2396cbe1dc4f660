"""Fused MoE: the alignment of pairs by expert, the torch twin against a per-token loop, and the Triton
kernel against the twin (unquantized and block FP8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interndeploy.kernels import reference_fp8
from interndeploy.kernels.fused_moe import moe_align_block_size
from interndeploy.kernels.reference_moe import fused_moe as fused_moe_ref


def _routing(num_tokens: int, num_experts: int, top_k: int, device="cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=g)
    weights, ids = torch.softmax(logits, -1).topk(top_k, dim=-1)
    return weights.to(device), ids.to(device)


def _experts(num_experts: int, hidden: int, inter: int, dtype, device="cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w13 = (torch.randn(num_experts, 2 * inter, hidden, generator=g) * hidden**-0.5).to(device, dtype)
    w2 = (torch.randn(num_experts, hidden, inter, generator=g) * inter**-0.5).to(device, dtype)
    return w13, w2


def _naive(x, w13, w2, weights, ids) -> torch.Tensor:
    """One token and one slot at a time, fp64."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate, up = (w13[e].double() @ x[t].double()).chunk(2)
            out[t] += float(weights[t, j]) * (w2[e].double() @ (F.silu(gate) * up))
    return out


@pytest.mark.parametrize(
    ("num_tokens", "num_experts", "top_k", "block_m"), [(1, 8, 2, 16), (13, 6, 3, 4), (40, 64, 8, 16)]
)
def test_align_sorts_pairs_by_expert_in_padded_runs(num_tokens: int, num_experts: int, top_k: int, block_m: int):
    _, ids = _routing(num_tokens, num_experts, top_k)
    sorted_ids, expert_ids, num_post = moe_align_block_size(ids, block_m, num_experts)
    pairs = num_tokens * top_k
    assert sorted_ids.numel() % block_m == 0 and sorted_ids.numel() // block_m == expert_ids.numel()
    used = int(num_post)
    assert used % block_m == 0 and used <= sorted_ids.numel()
    assert (sorted_ids[used:] == pairs).all()
    real = sorted_ids[:used][sorted_ids[:used] < pairs]
    assert sorted(real.tolist()) == list(range(pairs))  # every pair exactly once
    flat = ids.flatten()
    for tile in range(used // block_m):
        rows = sorted_ids[tile * block_m : (tile + 1) * block_m]
        rows = rows[rows < pairs].long()
        assert rows.numel() > 0, "a tile of only padding"
        assert (flat[rows] == expert_ids[tile]).all()
    touched = len(set(flat.tolist()))
    counts = torch.bincount(flat, minlength=num_experts)
    assert used == int(((counts + block_m - 1) // block_m * block_m).sum()) and touched <= used // block_m


@pytest.mark.parametrize("num_tokens", [1, 5, 33])
def test_reference_equals_naive_loop(num_tokens: int) -> None:
    x = torch.randn(num_tokens, 32, generator=torch.Generator().manual_seed(3))
    w13, w2 = _experts(8, 32, 24, torch.float32)
    weights, ids = _routing(num_tokens, 8, 3)
    out = fused_moe_ref(x, w13, w2, weights, ids)
    torch.testing.assert_close(out.double(), _naive(x, w13, w2, weights, ids), atol=1e-5, rtol=1e-5)


def test_reference_fp8_is_within_fp8_error() -> None:
    block = (16, 16)
    x = torch.randn(9, 64, generator=torch.Generator().manual_seed(3))
    w13, w2 = _experts(4, 64, 32, torch.float32)
    q13, s13 = reference_fp8.quantize_experts_block_fp8(w13, block)
    q2, s2 = reference_fp8.quantize_experts_block_fp8(w2, block)
    weights, ids = _routing(9, 4, 2)
    out = fused_moe_ref(x, q13, q2, weights, ids, w13_scale=s13, w2_scale=s2, block_shape=block)
    want = _naive(x, w13, w2, weights, ids)
    assert float((out.double() - want).norm() / want.norm()) < 0.08


# --- Triton against the twin (GPU, or TRITON_INTERPRET=1) ----------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k"), [(1, 16, 4), (7, 8, 2), (200, 32, 8)])
@pytest.mark.parametrize(("hidden", "inter"), [(128, 96), (256, 512)])
def test_triton_matches_reference(device: str, num_tokens: int, num_experts: int, top_k: int, hidden: int, inter: int):
    from interndeploy.kernels.fused_moe import fused_moe

    dtype = torch.float16 if device == "cpu" else torch.bfloat16
    x = torch.randn(num_tokens, hidden, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    w13, w2 = _experts(num_experts, hidden, inter, dtype, device)
    weights, ids = _routing(num_tokens, num_experts, top_k, device)
    out = fused_moe(x, w13, w2, weights, ids)
    want = fused_moe_ref(x.float(), w13.float(), w2.float(), weights, ids)
    assert out.dtype == dtype and out.shape == x.shape
    rel = float((out.double() - want.double()).norm() / want.double().norm())
    assert rel < 1e-2, rel


@pytest.mark.gpu
@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k"), [(1, 16, 4), (50, 8, 2)])
@pytest.mark.parametrize("block", [(128, 128), (64, 64)])
def test_triton_fp8_matches_reference(
    device: str, monkeypatch: pytest.MonkeyPatch, num_tokens: int, num_experts: int, top_k: int, block
) -> None:
    from interndeploy.kernels import fp8_gemm
    from interndeploy.kernels.fused_moe import fused_moe

    if device == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need compute capability 8.9+")
    if device == "cpu":  # the interpreter rounds fp32 -> e4m3 wrongly across powers of two (see test_fp8_gemm)
        monkeypatch.setattr(fp8_gemm, "per_token_group_quant_fp8", reference_fp8.per_token_group_quant_fp8)
    hidden, inter = 256, 384
    dtype = torch.float16 if device == "cpu" else torch.bfloat16
    x = torch.randn(num_tokens, hidden, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    w13, w2 = _experts(num_experts, hidden, inter, torch.float32, device)
    q13, s13 = reference_fp8.quantize_experts_block_fp8(w13, block)
    q2, s2 = reference_fp8.quantize_experts_block_fp8(w2, block)
    weights, ids = _routing(num_tokens, num_experts, top_k, device)
    kw = {"w13_scale": s13, "w2_scale": s2, "block_shape": block}
    out = fused_moe(x, q13, q2, weights, ids, **kw)
    want = fused_moe_ref(x, q13, q2, weights, ids, **kw)
    rel = float((out.double() - want.double()).norm() / want.double().norm())
    assert rel < 1e-2, rel


def test_launcher_rejects_mismatched_inputs() -> None:
    from interndeploy.kernels.fused_moe import fused_moe

    x = torch.randn(3, 32)
    w13, w2 = _experts(4, 32, 16, torch.float32)
    weights, ids = _routing(3, 4, 2)
    with pytest.raises(ValueError, match="do not fit together"):
        fused_moe(x, w13, w2[:, :, :8], weights, ids)
    with pytest.raises(ValueError, match=r"topk_weights/ids must be \[T, k\]"):
        fused_moe(x, w13, w2, weights[:2], ids)
    with pytest.raises(ValueError, match="x is torch.float32, experts torch.float16"):
        fused_moe(x, w13.half(), w2.half(), weights, ids)
    with pytest.raises(ValueError, match="FP8 experts are"):
        fused_moe(x, w13, w2, weights, ids, w13_scale=torch.ones(1), w2_scale=torch.ones(1), block_shape=(16, 16))
