"""SwiGLU activation: x [..., 2I] = [gate | up] -> silu(gate) * up [..., I] (twin: reference.silu_and_mul).

Grid (rows, I / BLOCK). silu is computed in fp32 and rounded to x's dtype before the product, as
torch's F.silu(gate) * up does.
"""

import torch

from interndeploy.kernels._triton import cdiv, check, next_power_of_2, pdl_launch, pdl_wait, tl, triton


@triton.jit
def _silu_and_mul_kernel(X, Out, stride_x, stride_o, n_cols, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_cols
    gate = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + n_cols + offs, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(Out.dtype.element_ty).to(tl.float32)
    tl.store(Out + row * stride_o + offs, (act * up).to(Out.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> [..., I]."""
    check(x.dim() >= 1 and x.shape[-1] % 2 == 0, f"x must be [..., 2I], got {tuple(x.shape)}")
    n = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * n)
    check(x2.stride(-1) == 1, "x must be contiguous in its last dim")
    out = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
    if x2.shape[0] and n:
        block = min(next_power_of_2(n), 1024)
        _silu_and_mul_kernel[(x2.shape[0], cdiv(n, block))](
            x2, out, x2.stride(0), out.stride(0), n, BLOCK=block, num_warps=4 if block >= 512 else 1,
            **pdl_launch(x.device),
        )
    return out.view(*x.shape[:-1], n)
