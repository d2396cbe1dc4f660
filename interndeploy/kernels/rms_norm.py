"""RMSNorm, and RMSNorm with the residual add fused in (twins: reference.rms_norm / fused_add_rms_norm).

One program per row of [M, N]. Rounding follows the reference step for step (HF Llama): the residual
sum is rounded to the input dtype, normalised in fp32, rounded back, then multiplied by the weight.
"""

import torch

from interndeploy.kernels._triton import check, next_power_of_2, pdl_launch, pdl_wait, tl, triton

MAX_HIDDEN = 65536  # one row per program, held in registers


@triton.jit
def _rms_norm_kernel(
    X,
    Residual,
    W,
    Out,
    ResidualOut,
    stride_x,
    stride_r,
    stride_o,
    stride_ro,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < n_cols
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(Residual + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(ResidualOut + row * stride_ro + offs, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n_cols + eps)
    normed = (xf * rstd).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_o + offs, (normed * w).to(Out.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    check(x.dim() >= 1 and x.shape[-1] == weight.shape[-1], f"x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    check(weight.dim() == 1 and weight.stride(0) == 1, "weight must be a contiguous [N]")
    n = x.shape[-1]
    check(n <= MAX_HIDDEN, f"hidden size {n} is over the kernel's {MAX_HIDDEN}")
    check(x.device == weight.device, f"x is on {x.device}, weight on {weight.device}")
    x2 = x.reshape(-1, n)
    check(x2.stride(-1) == 1, "x must be contiguous in its last dim")
    out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    r2 = res_out = x2  # placeholders when there is no residual
    if residual is not None:
        check(residual.shape == x.shape and residual.dtype == x.dtype, "residual must have x's shape and dtype")
        r2 = residual.reshape(-1, n)
        check(r2.stride(-1) == 1, "residual must be contiguous in its last dim")
        res_out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    rows = x2.shape[0]
    if rows:
        block = next_power_of_2(n)
        _rms_norm_kernel[(rows,)](
            x2,
            r2,
            weight,
            out,
            res_out,
            x2.stride(0),
            r2.stride(0),
            out.stride(0),
            res_out.stride(0),
            n,
            eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK_N=block,
            num_warps=min(max(block // 256, 1), 16),
            **pdl_launch(x.device),
        )
    return out.view(x.shape), res_out.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., N] / rms(x) * weight [N]."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass; x and residual are left unchanged."""
    return _launch(x, residual, weight, eps)
