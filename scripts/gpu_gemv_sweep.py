"""Batch-1 linears of a model shape on a GPU: cuBLAS against the Triton GEMV (16-bit weights) and the AWQ W4A16
kernels over a grid of launch configurations. One JSON line per (layer, kernel) with the best configuration,
its microseconds and the fraction of the copy bandwidth it reaches on the bytes it must read.

    PYTHONPATH=$(pwd) python3 scripts/gpu_gemv_sweep.py [--shape internlm2_5-7b] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
from functools import partial

import torch
import torch.nn.functional as F

from interndeploy.bench.awq_kernels import _time_us, layer_shapes
from interndeploy.bench.shapes import SHAPES
from interndeploy.bench.throughput import copy_bandwidth
from interndeploy.kernels.awq_gemm import AwqLaunch, awq_gemm, default_launch
from interndeploy.kernels.gemv import GemvConfig, gemv
from interndeploy.kernels.reference_awq import awq_dequantize, pack_int4


def _best(fn_of_cfg, configs, check) -> tuple[float, object]:
    best = (float("inf"), None)
    for cfg in configs:
        try:
            fn = partial(fn_of_cfg, cfg)
            if not check(fn()):
                print(json.dumps({"wrong": str(cfg)}), flush=True)
                continue
            t = _time_us(fn, iters=20)
        except Exception as e:  # out of resources, bad tile for the shape
            print(json.dumps({"skip": str(cfg), "why": f"{type(e).__name__}: {str(e)[:120]}"}), flush=True)
            continue
        best = min(best, (t, cfg), key=lambda p: p[0])
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="internlm2_5-7b", choices=sorted(SHAPES))
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="a smaller grid")
    ap.add_argument("--awq-only", action="store_true", help="time cuBLAS but sweep only the AWQ kernels")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.matmul(torch.ones(8, 8, device=dev), torch.ones(8, 8, device=dev))
    bw = copy_bandwidth(dev)
    print(json.dumps({"gpu": torch.cuda.get_device_name(dev), "copy_TBps": bw / 1e12}), flush=True)
    shapes = layer_shapes(args.shape)
    c = SHAPES[args.shape]
    shapes["lm_head"] = (c["hidden_size"], c["vocab_size"])
    q = args.quick
    gemv_grid = [GemvConfig(bn, bk, w, s) for bn, bk, w, s in itertools.product(
        [8, 16] if q else [4, 8, 16, 32], [256, 512] if q else [256, 512, 1024], [4] if q else [4, 8],
        [2, 3] if q else [2, 3, 4])]
    totals = {"cublas": 0.0, "gemv": 0.0, "awq_default": 0.0, "awq_best": 0.0}
    for layer, (k, n) in shapes.items():
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        ref = F.linear(x.float(), w.float())

        def close(out: torch.Tensor, ref: torch.Tensor = ref) -> bool:
            return bool((out.float() - ref).norm() / ref.norm() < 1e-2)

        t_cublas = _time_us(partial(F.linear, x, w), iters=20)
        grid16 = [] if args.awq_only else gemv_grid
        t_gemv, cfg = _best(lambda cfg, x=x, w=w: gemv(x, w, cfg), grid16, close) if grid16 else (t_cublas, None)
        gbytes = n * k * 2
        print(json.dumps({"layer": layer, "K": k, "N": n, "cublas_us": t_cublas,
                          "cublas_bw": gbytes / t_cublas / 1e-6 / bw, "gemv_us": t_gemv,
                          "gemv_bw": gbytes / t_gemv / 1e-6 / bw, "gemv_cfg": str(cfg)}), flush=True)
        totals["cublas"] += t_cublas
        totals["gemv"] += min(t_gemv, t_cublas)
        if layer == "lm_head":
            continue
        g = args.group
        qw = pack_int4(torch.randint(0, 16, (k, n), device=dev))
        qz = pack_int4(torch.randint(0, 16, (k // g, n), device=dev))
        sc = torch.rand(k // g, n, device=dev, dtype=torch.bfloat16) * 0.01 + 0.001
        aref = x.double() @ awq_dequantize(qw, sc, qz, torch.float64)

        def aclose(out: torch.Tensor, aref: torch.Tensor = aref) -> bool:
            return bool((out.double() - aref).norm() / aref.norm() < 1e-2)

        awq_bytes = k * n // 2 + (k // g) * n * 2.5
        t_def = _time_us(partial(awq_gemm, x, qw, sc, qz), iters=20)
        grid = [AwqLaunch("gemm", 16, bn, bk, wp, st, sp) for bn, bk, wp, st, sp in itertools.product(
            [64, 128] if q else [64, 128, 256], [64, 128], [4] if q else [4, 8], [3] if q else [2, 3, 4],
            [None, 4, 8] if q else [None, 2, 4, 8, 16])]
        grid += [AwqLaunch("gemv", 1, bn, bk, wp, st, sp) for bn, bk, wp, st, sp in itertools.product(
            [128, 256], [32, 64] if q else [64, 128], [4], [2, 3], [None])]
        t_awq, acfg = _best(lambda cfg, x=x, qw=qw, sc=sc, qz=qz: awq_gemm(x, qw, sc, qz, cfg), grid, aclose)
        print(json.dumps({"layer": layer, "awq_default_us": t_def, "awq_default_cfg": str(default_launch(1, g)),
                          "awq_best_us": t_awq, "awq_bw": awq_bytes / t_awq / 1e-6 / bw, "awq_cfg": str(acfg),
                          "vs_cublas_bf16": t_cublas / t_awq}), flush=True)
        totals["awq_default"] += t_def
        totals["awq_best"] += t_awq
    print(json.dumps({"totals_us_per_layer_set": totals}), flush=True)


if __name__ == "__main__":
    main()
