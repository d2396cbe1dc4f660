"""Programmatic dependent launch: kernels launched to overlap the one before them still see its writes.

A chain where every kernel reads what the previous one wrote (norm -> GEMV -> SwiGLU -> GEMV -> norm ...),
eager and captured in a CUDA graph, against the same chain through the torch twins. A kernel that read before
its `pdl_wait` would read the previous step's stale activations and be far off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interndeploy.kernels import reference
from interndeploy.kernels._triton import pdl_launch
from interndeploy.kernels.gemv import gemv
from interndeploy.kernels.rms_norm import fused_add_rms_norm
from interndeploy.kernels.silu_and_mul import silu_and_mul


def test_no_dependent_launch_off_gpu() -> None:
    assert pdl_launch(torch.device("cpu")) == {"USE_PDL": False}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("graph", [False, True])
def test_dependent_chain_matches_twins(graph: bool) -> None:
    torch.manual_seed(0)
    hidden, inter, layers, dtype = 1024, 2048, 6, torch.bfloat16
    norm_w = [torch.rand(hidden, device="cuda", dtype=dtype) + 0.5 for _ in range(layers)]
    up = [torch.randn(2 * inter, hidden, device="cuda", dtype=dtype) * hidden**-0.5 for _ in range(layers)]
    down = [torch.randn(hidden, inter, device="cuda", dtype=dtype) * inter**-0.5 for _ in range(layers)]
    x0 = torch.randn(1, hidden, device="cuda", dtype=dtype)
    x = torch.zeros_like(x0)

    def chain(norm, linear, act) -> torch.Tensor:
        h, res = x, torch.zeros_like(x)
        for i in range(layers):
            normed, res = norm(h, res, norm_w[i])
            h = linear(act(linear(normed, up[i])), down[i])
        return h + res

    def ours() -> torch.Tensor:
        return chain(lambda h, r, w: fused_add_rms_norm(h, r, w, 1e-5), gemv, silu_and_mul)

    def twins() -> torch.Tensor:
        return chain(lambda h, r, w: reference.fused_add_rms_norm(h, r, w, 1e-5), F.linear, reference.silu_and_mul)

    x.copy_(x0)
    expected = twins()
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            ours()  # compile outside the capture
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = ours()
        x.zero_()
        g.replay()
        x.copy_(x0)  # the replay below must see these inputs, not the zeros of the first one
        g.replay()
    else:
        out = ours()
    torch.cuda.synchronize()
    assert float((out.float() - expected.float()).norm() / expected.float().norm()) < 2e-2
