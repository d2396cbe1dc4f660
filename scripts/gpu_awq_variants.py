"""Batch-1 W4A16 (AWQ layout) kernel variants at the 7B layer shapes, against the shipped GEMV, cuBLAS bf16 and
torch's tinygemm (`torch._weight_int4pack_mm`). One JSON line per (layer, variant): best config, microseconds,
fraction of the copy bandwidth on the bytes read.

    PYTHONPATH=$(pwd) python3 scripts/gpu_awq_variants.py [--quick]

Variant kernel `_gemv_cols`: no interleave; the packed word is broadcast against the 8 nibble shifts as a
[BLOCK_K, BLOCK_P, 8] tile, int4 -> fp32 through the 2^23 exponent trick (or + fsub on the full-rate ALUs, not
the quarter-rate I2F unit) when MAGIC, and the scale applied per element (SCALE_AFTER=False) or once per K
block after a reduction over K (SCALE_AFTER=True).
"""

from __future__ import annotations

import argparse
import itertools
import json
from functools import partial

import torch
import torch.nn.functional as F

from interndeploy.bench.awq_kernels import _time_us, layer_shapes
from interndeploy.bench.throughput import copy_bandwidth
from interndeploy.kernels._triton import cdiv, tl, triton
from interndeploy.kernels.awq_gemm import awq_gemm
from interndeploy.kernels.reference_awq import AWQ_SHIFTS, awq_dequantize, pack_int4


@triton.jit
def _gemv_cols(
    x_ptr, qw_ptr, s_ptr, qz_ptr, out_ptr, N, group_size, k_split, K,
    stride_xm, stride_qk, stride_sg, stride_zg, stride_os, stride_om,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, MAGIC: tl.constexpr, SCALE_AFTER: tl.constexpr,
):
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_p = pid_n * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < N // 8
    j = tl.arange(0, 8)
    shifts = ((j % 2) * 4 + j // 2) * 4
    offs_n = offs_p[:, None] * 8 + j[None, :]
    if SCALE_AFTER:
        acc2 = tl.zeros((BLOCK_P, 8), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_K, BLOCK_P, 8), dtype=tl.float32)
    k_lo = pid_s * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + m * stride_xm + offs_k).to(tl.float32)
        w = tl.load(qw_ptr + offs_k[:, None] * stride_qk + offs_p[None, :], mask=mask_p[None, :], other=0)
        g = k0 // group_size
        z = tl.load(qz_ptr + g * stride_zg + offs_p, mask=mask_p, other=0)
        zq = (z[:, None] >> shifts[None, :]) & 0xF
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_p[:, None], other=0.0).to(tl.float32)
        q = (w[:, :, None] >> shifts[None, None, :]) & 0xF
        if MAGIC:
            qf = (q | 0x4B000000).to(tl.float32, bitcast=True)
            zf = zq.to(tl.float32) + 8388608.0
        else:
            qf = q.to(tl.float32)
            zf = zq.to(tl.float32)
        if SCALE_AFTER:
            acc2 += tl.sum(x[:, None, None] * (qf - zf[None, :, :]), axis=0) * s
        else:
            acc += x[:, None, None] * ((qf - zf[None, :, :]) * s[None, :, :])
    if SCALE_AFTER:
        out = acc2
    else:
        out = tl.sum(acc, axis=0)
    tl.store(out_ptr + pid_s * stride_os + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty),
             mask=mask_p[:, None])


def gemv_cols(x, qw, sc, qz, cfg):
    block_p, block_k, warps, stages, splits, magic, after = cfg
    m, k = x.shape
    n = sc.shape[1]
    group = k // sc.shape[0]
    k_split = cdiv(k // block_k, splits) * block_k
    splits = cdiv(k, k_split)
    out = torch.empty(splits, m, n, dtype=torch.float32 if splits > 1 else x.dtype, device=x.device)
    _gemv_cols[(m, cdiv(n // 8, block_p), splits)](
        x, qw, sc, qz, out, n, group, k_split, k, x.stride(0), qw.stride(0), sc.stride(0), qz.stride(0),
        out.stride(0), out.stride(1), BLOCK_P=block_p, BLOCK_K=block_k, MAGIC=magic, SCALE_AFTER=after,
        num_warps=warps, num_stages=stages,
    )
    return out[0] if splits == 1 else out.sum(0).to(x.dtype)


def tinygemm_operands(qw, sc, qz, inner_k_tiles):
    """AWQ (q - z) * s -> tinygemm's (q - 8) * s + zero, weights [N, K/2] uint8 repacked."""
    k, n8 = qw.shape
    n = n8 * 8
    shifts = torch.tensor(AWQ_SHIFTS, device=qw.device, dtype=torch.int32)
    q = ((qw.unsqueeze(-1) >> shifts) & 0xF).reshape(k, n).t().contiguous()  # [N, K]
    z = ((qz.unsqueeze(-1) >> shifts) & 0xF).reshape(-1, n).float()  # [G, N]
    u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    packed = torch._convert_weight_to_int4pack(u8, inner_k_tiles)
    szs = torch.stack([sc.float(), (8 - z) * sc.float()], dim=-1).to(torch.bfloat16).contiguous()  # [G, N, 2]
    return packed, szs


def m_sweep(shape: str, g: int) -> None:
    dev = torch.device("cuda")
    for layer, (k, n) in layer_shapes(shape).items():
        qw = pack_int4(torch.randint(0, 16, (k, n), device=dev))
        qz = pack_int4(torch.randint(0, 16, (k // g, n), device=dev))
        sc = (torch.rand(k // g, n, device=dev) * 0.01 + 0.001).to(torch.bfloat16)
        wbf = awq_dequantize(qw, sc, qz, torch.bfloat16).t().contiguous()
        packed, szs = tinygemm_operands(qw, sc, qz, 8)
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            row = {"layer": layer, "m": m,
                   "cublas_bf16_us": _time_us(partial(F.linear, x, wbf), iters=10),
                   "shipped_us": _time_us(partial(awq_gemm, x, qw, sc, qz), iters=10),
                   "tinygemm8_us": _time_us(partial(torch._weight_int4pack_mm, x, packed, g, szs), iters=10)}
            print(json.dumps({k2: round(v, 1) if isinstance(v, float) else v for k2, v in row.items()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shape", default="internlm2_5-7b")
    ap.add_argument("--m-sweep", action="store_true", help="tinygemm vs the shipped kernels over M, then stop")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.matmul(torch.ones(8, 8, device=dev), torch.ones(8, 8, device=dev))
    bw = copy_bandwidth(dev)
    print(json.dumps({"gpu": torch.cuda.get_device_name(dev), "copy_TBps": bw / 1e12}), flush=True)
    g = 128
    if args.m_sweep:
        m_sweep(args.shape, g)
        return
    totals: dict[str, float] = {}
    for layer, (k, n) in layer_shapes(args.shape).items():
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        qw = pack_int4(torch.randint(0, 16, (k, n), device=dev))
        qz = pack_int4(torch.randint(0, 16, (k // g, n), device=dev))
        sc = (torch.rand(k // g, n, device=dev) * 0.01 + 0.001).to(torch.bfloat16)
        aref = x.double() @ awq_dequantize(qw, sc, qz, torch.float64)
        wbf = awq_dequantize(qw, sc, qz, torch.bfloat16).t().contiguous()
        nbytes = k * n // 2 + (k // g) * n * 2.5

        def ok(out, aref=aref):
            return bool((out.double() - aref).norm() / aref.norm() < 1e-2)

        row = {"layer": layer, "K": k, "N": n}
        timings = {"cublas_bf16": _time_us(partial(F.linear, x, wbf)), "shipped": _time_us(
            partial(awq_gemm, x, qw, sc, qz))}
        for tiles in (2, 4, 8):
            try:
                packed, szs = tinygemm_operands(qw, sc, qz, tiles)
                fn = partial(torch._weight_int4pack_mm, x, packed, g, szs)
                if ok(fn()):
                    timings[f"tinygemm{tiles}"] = _time_us(fn)
                else:
                    row[f"tinygemm{tiles}"] = "wrong"
            except Exception as e:  # noqa: BLE001 - report and go on
                row[f"tinygemm{tiles}"] = f"{type(e).__name__}: {str(e)[:100]}"
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        grid = []
        for bp, bk, wp, st, magic, after in itertools.product(
                [16, 32], [64, 128], [4] if args.quick else [4, 8], [2, 4], [True, False], [False, True]):
            auto = max(1, min(k // bk, cdiv(2 * sms, cdiv(n // 8, bp)), 32))
            grid += [(bp, bk, wp, st, sp, magic, after) for sp in sorted({auto, min(k // bk, 2 * auto)})]
        best: dict[str, tuple[float, tuple]] = {}
        for cfg in grid:
            key = f"cols_magic{int(cfg[5])}_after{int(cfg[6])}"
            try:
                fn = partial(gemv_cols, x, qw, sc, qz, cfg)
                if not ok(fn()):
                    row.setdefault("wrong", []).append(str(cfg))
                    continue
                t = _time_us(fn, iters=20)
            except Exception as e:  # noqa: BLE001 - out of resources for a tile
                row.setdefault("skip", str(e)[:80])
                continue
            if t < best.get(key, (float("inf"),))[0]:
                best[key] = (t, cfg)
        for key, (t, cfg) in best.items():
            timings[key] = t
            row[key + "_cfg"] = cfg
        row.update({f"{k}_us": round(v, 2) for k, v in timings.items()})
        row.update({f"{k}_bw": round(nbytes / v / 1e-6 / bw, 3) for k, v in timings.items() if k != "cublas_bf16"})
        print(json.dumps(row), flush=True)
        for key, v in timings.items():
            totals[key] = totals.get(key, 0.0) + v
    print(json.dumps({"totals_us_per_layer_set": {k: round(v, 1) for k, v in totals.items()}}), flush=True)


if __name__ == "__main__":
    main()
