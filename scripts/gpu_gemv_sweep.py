"""Batch-1 linears of a model shape on a GPU: cuBLAS against the Triton GEMV (16-bit and FP8 block-scaled weights)
over a grid of launch configurations, and torch's int4 kernel against the AWQ Triton GEMV. One JSON line per layer
with the best configuration, its microseconds, the fraction of the copy bandwidth it reaches on the bytes it must
read, and what `pick_config` chooses. Every timing cycles through enough weight copies to defeat L2.

    PYTHONPATH=$(pwd) python3 scripts/gpu_gemv_sweep.py [--shape internlm2_5-7b] [--kinds bf16 fp8 awq] [--tp 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
from functools import partial

import torch
import torch.nn.functional as F

from interndeploy.bench.awq_kernels import layer_shapes, time_graph_us
from interndeploy.bench.shapes import SHAPES
from interndeploy.bench.throughput import copy_bandwidth
from interndeploy.kernels._triton import cdiv
from interndeploy.kernels.awq_gemm import AwqLaunch, awq_gemm
from interndeploy.kernels.gemv import GemvConfig, gemv, gemv_fp8_block, pick_config
from interndeploy.kernels.reference_awq import awq_dequantize, pack_int4
from interndeploy.kernels.reference_fp8 import FP8_DTYPE, block_dequant
from interndeploy.quant import awq_tinygemm

FP8_BLOCK = (128, 128)


def _time_rotating(fns: list, iters: int = 4) -> float:
    """Microseconds per call, cycling through `fns` (one per weight copy): the copies together exceed L2 several
    times, so every call streams its weight from HBM as a decode step does."""
    return time_graph_us(fns, iters)


def _copies(nbytes: int, l2_bytes: int = 50 << 20) -> int:
    return max(2, -(-4 * l2_bytes // nbytes))


def _best(fn_of_cfg, configs, check, args_list) -> tuple[float, object]:
    """The fastest configuration: fn_of_cfg(cfg, *args) for each weight copy's args, checked on the first."""
    best = (float("inf"), None)
    for cfg in configs:
        try:
            if not check(fn_of_cfg(cfg, *args_list[0])):
                print(json.dumps({"wrong": str(cfg)}), flush=True)
                continue
            t = _time_rotating([partial(fn_of_cfg, cfg, *a) for a in args_list])
        except Exception as e:  # out of resources, bad tile for the shape
            print(json.dumps({"skip": str(cfg), "why": f"{type(e).__name__}: {str(e)[:120]}"}), flush=True)
            continue
        best = min(best, (t, cfg), key=lambda p: p[0])
    return best


def tp_shapes(shapes: dict[str, tuple[int, int]], tp: int) -> dict[str, tuple[int, int]]:
    """One rank's (K, N) under tensor parallelism: column-parallel layers split N, row-parallel ones K."""
    row_parallel = {"o", "down"}
    return {name: (k // tp, n) if name in row_parallel else (k, n // tp) for name, (k, n) in shapes.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="internlm2_5-7b", choices=sorted(SHAPES))
    ap.add_argument("--kinds", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8", "awq"])
    ap.add_argument("--tp", type=int, default=1, help="sweep one rank's shapes under tensor parallelism")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="a smaller grid")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.matmul(torch.ones(8, 8, device=dev), torch.ones(8, 8, device=dev))
    bw = copy_bandwidth(dev)
    print(
        json.dumps(
            {"gpu": torch.cuda.get_device_name(dev), "copy_TBps": bw / 1e12, "shape": args.shape, "tp": args.tp}
        ),
        flush=True,
    )
    c = SHAPES[args.shape]
    shapes = tp_shapes({**layer_shapes(args.shape), "lm_head": (c["hidden_size"], c["vocab_size"])}, args.tp)
    q = args.quick
    gemv_grid = [
        GemvConfig(bn, bk, w, s)
        for bn, bk, w, s in itertools.product(
            [4, 8, 16] if q else [2, 4, 8, 16],
            [512, 1024] if q else [256, 512, 1024, 2048],
            [4, 8],
            [2, 3],
        )
    ]
    totals: dict[str, float] = {}

    def add(key: str, us: float) -> None:
        totals[key] = totals.get(key, 0.0) + us

    for layer, (k, n) in shapes.items():
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        copies = _copies(n * k * 2)
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        ref = F.linear(x.float(), ws[0].float())

        def close(out: torch.Tensor, ref: torch.Tensor = ref) -> bool:
            return bool((out.float() - ref).norm() / ref.norm() < 1e-2)

        t_cublas = _time_rotating([partial(F.linear, x, w) for w in ws])
        row = {"layer": layer, "K": k, "N": n, "cublas_us": t_cublas, "cublas_bw": n * k * 2 / t_cublas / 1e-6 / bw}
        add("cublas", t_cublas)
        if "bf16" in args.kinds:
            t, cfg = _best(lambda cfg, x, w: gemv(x, w, cfg), gemv_grid, close, [(x, w) for w in ws])
            t_pick = _time_rotating([partial(gemv, x, w) for w in ws])
            row.update(
                gemv_us=t,
                gemv_bw=n * k * 2 / t / 1e-6 / bw,
                gemv_cfg=str(cfg),
                pick_us=t_pick,
                pick_cfg=str(pick_config(n, k)),
            )
            add("gemv_best", min(t, t_cublas))
            add("gemv_pick", t_pick)
        del ws
        if "fp8" in args.kinds and layer != "lm_head":
            copies = _copies(n * k)
            fws = []
            for _ in range(copies):
                w8 = (torch.randn(n, k, device=dev) * 0.02).to(FP8_DTYPE)
                s8 = torch.rand(cdiv(n, 128), cdiv(k, 128), device=dev) * 0.1 + 0.05
                fws.append((x, w8, s8))
            fref = F.linear(x.float(), block_dequant(fws[0][1], fws[0][2], FP8_BLOCK).float())

            def fclose(out: torch.Tensor, ref: torch.Tensor = fref) -> bool:
                return bool((out.float() - ref).norm() / ref.norm() < 1e-2)

            grid8 = [cfg for cfg in gemv_grid if FP8_BLOCK[0] % cfg.block_n == 0]
            grid8 += [GemvConfig(bn, bk, w, st, row_sum=True) for bn, bk, w, st in itertools.product(
                [4, 8, 16], [1024, 2048, 4096], [4, 8], [2, 3])]  # fmt: skip
            t, cfg = _best(lambda cfg, x, w, s: gemv_fp8_block(x, w, s, FP8_BLOCK, cfg), grid8, fclose, fws)
            t_pick = _time_rotating([partial(gemv_fp8_block, x, w, s, FP8_BLOCK) for x, w, s in fws])
            row.update(fp8_us=t, fp8_bw=n * k / t / 1e-6 / bw, fp8_cfg=str(cfg), fp8_pick_us=t_pick)
            add("fp8_best", t)
            add("fp8_pick", t_pick)
            del fws
        print(json.dumps(row), flush=True)
        if "awq" not in args.kinds or layer == "lm_head":
            continue
        g = args.group
        awq_bytes = k * n // 2 + (k // g) * n * 2.5
        aws = []
        for _ in range(_copies(int(awq_bytes))):
            qw = pack_int4(torch.randint(0, 16, (k, n), device=dev))
            qz = pack_int4(torch.randint(0, 16, (k // g, n), device=dev))
            sc = torch.rand(k // g, n, device=dev, dtype=torch.bfloat16) * 0.01 + 0.001
            aws.append((x, qw, sc, qz))
        aref = x.double() @ awq_dequantize(aws[0][1], aws[0][2], aws[0][3], torch.float64)

        def aclose(out: torch.Tensor, aref: torch.Tensor = aref) -> bool:
            return bool((out.double() - aref).norm() / aref.norm() < 1e-2)

        int4 = [awq_tinygemm.repack(qw, sc, qz) for _, qw, sc, qz in aws]
        t_tiny = _time_rotating([partial(awq_tinygemm.int4_matmul, x, p.packed, p.scale_zero, g) for p in int4])
        del int4
        grid = [
            AwqLaunch("gemv", 1, bn, bk, wp, st, sp)
            for bn, bk, wp, st, sp in itertools.product([128, 256], [32, 64] if q else [64, 128], [4], [2, 3], [None])
        ]
        t_awq, acfg = _best(lambda cfg, x, qw, sc, qz: awq_gemm(x, qw, sc, qz, cfg), grid, aclose, aws)
        print(
            json.dumps(
                {
                    "layer": layer,
                    "tinygemm_us": t_tiny,
                    "tinygemm_bw": awq_bytes / t_tiny / 1e-6 / bw,
                    "awq_best_us": t_awq,
                    "awq_bw": awq_bytes / t_awq / 1e-6 / bw,
                    "awq_cfg": str(acfg),
                }
            ),
            flush=True,
        )
        add("tinygemm", t_tiny)
        add("awq_best", t_awq)
        del aws
    print(json.dumps({"totals_us_per_layer_set_and_head": totals}), flush=True)


if __name__ == "__main__":
    main()
