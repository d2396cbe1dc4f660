"""Kernel tests: each Triton kernel against its torch twin in `kernels/reference.py`.

Tests marked `gpu` need Triton and a CUDA device and are skipped without them. With TRITON_INTERPRET=1
they also run on CPU through Triton's interpreter (slow: pick a few with -k).
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a CUDA device (or TRITON_INTERPRET=1)")
    params = getattr(request.node, "callspec", None)
    if "attention" in request.node.nodeid and params and params.params.get("dtype") == torch.bfloat16:
        pytest.skip("Triton's interpreter computes bf16 tl.dot wrongly")
    return "cpu"


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


# a rounding step apart (fp32 order of operations, FMA contraction): up to two units in the last place
ULP_TOL = {torch.bfloat16: (1e-5, 1.6e-2), torch.float16: (1e-5, 2e-3), torch.float32: (1e-5, 1e-5)}  # atol, rtol


def _assert_ulp_close(out: torch.Tensor, ref: torch.Tensor, *, exact: bool = False) -> None:
    # Triton's interpreter (CPU) truncates fp32 -> bf16 where CUDA rounds to nearest even
    truncating = out.device.type == "cpu" and out.dtype == torch.bfloat16
    if exact and not truncating:
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
    else:
        atol, rtol = ULP_TOL[out.dtype]
        torch.testing.assert_close(out, ref, atol=atol, rtol=rtol * (2 if truncating else 1))


@pytest.fixture
def assert_ulp_close():
    """Elementwise kernel output vs reference: equal (`exact`) or within a couple of ulps."""
    return _assert_ulp_close


ATTN_TOL = {torch.bfloat16: (3e-2, 1e-2), torch.float16: (5e-3, 2e-3), torch.float32: (1e-4, 1e-5)}  # atol, rel


def _assert_attention_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.isfinite(out).all(), "output has NaN/inf (unwritten or read past the context?)"
    atol, rel = ATTN_TOL[out.dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=0)
    assert rel_error(out, ref) < rel


@pytest.fixture
def assert_attention_close():
    """Attention output vs reference: all finite, within ATTN_TOL's atol and relative error for its dtype."""
    return _assert_attention_close
