"""W4A16 kernel timings at real layer shapes: the AWQ Triton GEMM / GEMV against cuBLAS on 16-bit weights.

    python -m interndeploy.bench.awq_kernels [--shape internlm2_5-7b] [--m 1 4 16 64 512 4096] [--group 128]

Each call is captured in a CUDA graph and replayed, so batch-1 figures are kernel time, not launch time.
Prints per layer and M: microseconds for AWQ and for `x @ W^T` in bf16, and the fraction of the device's
copy bandwidth the AWQ kernel reaches on the bytes it must read (packed weights, scales, zeros).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch

from interndeploy.bench.shapes import SHAPES


def time_graph_us(fns: list[Callable[[], object]], iters: int = 50) -> float:
    """Microseconds per call over `iters` passes of `fns` captured in one CUDA graph (after a warm-up call of each
    outside it). Several `fns` over different weight copies keep a weight from staying in L2 between calls."""
    for fn in fns:
        fn()  # compile / warm up outside the graph
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            for fn in fns:
                fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (iters * len(fns))


def _time_us(fn: Callable[[], object], iters: int = 50) -> float:
    return time_graph_us([fn], iters)


def layer_shapes(name: str) -> dict[str, tuple[int, int]]:
    """(K in, N out) of the decoder linears of a shape."""
    c = SHAPES[name]
    h, i = c["hidden_size"], c["intermediate_size"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    d = c.get("head_dim") or h // heads
    return {"qkv": (h, (heads + 2 * kv) * d), "o": (heads * d, h), "gate_up": (h, 2 * i), "down": (i, h)}


def main(argv: list[str] | None = None) -> None:
    from interndeploy.bench.throughput import copy_bandwidth
    from interndeploy.kernels.awq_gemm import awq_gemm
    from interndeploy.kernels.reference_awq import pack_int4

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="internlm2_5-7b", choices=sorted(SHAPES))
    p.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64, 512, 4096])
    p.add_argument("--group", type=int, default=128)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    torch.matmul(torch.ones(8, 8, device=dev), torch.ones(8, 8, device=dev))  # initialise cuBLAS before capture
    bw = copy_bandwidth(dev)
    print(f"{torch.cuda.get_device_name(dev)}, copy bandwidth {bw / 1e12:.2f} TB/s, group {args.group}")
    print(f"{'layer':8} {'K':>6} {'N':>6} {'M':>5} {'awq us':>8} {'bf16 us':>8} {'speedup':>7} {'awq %bw':>7}")
    for layer, (k, n) in layer_shapes(args.shape).items():
        g = args.group
        qweight = pack_int4(torch.randint(0, 16, (k, n), device=dev))
        qzeros = pack_int4(torch.randint(0, 16, (k // g, n), device=dev))
        scales = torch.rand(k // g, n, device=dev, dtype=torch.bfloat16) * 0.01
        w16 = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        awq_bytes = k * n // 2 + (k // g) * n * (2 + 0.5)
        for m in args.m:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            t_awq = _time_us(partial(awq_gemm, x, qweight, scales, qzeros))
            t_16 = _time_us(partial(torch.matmul, x, w16.t()))
            frac = (awq_bytes + m * (k + n) * 2) / (t_awq * 1e-6) / bw
            print(f"{layer:8} {k:6} {n:6} {m:5} {t_awq:8.1f} {t_16:8.1f} {t_16 / t_awq:7.2f} {frac:7.1%}")


if __name__ == "__main__":
    main()
