"""Micro-benchmark of paged decode attention on CUDA: Triton split-K kernel vs the torch reference.

    python3 tests/kernels/bench_decode_attention.py [--sweep] [--quant-policy 8|4] [--kv-heads 32]

32 q heads / 8 kv heads (--kv-heads) / head_dim 128, bf16, block_size 64 (the engine default), every sequence
at the full context; the KV cache in bf16, or int8 / int4 codes plus fp16 scale/zero (--quant-policy).
The Triton path is timed as CUDA-graph replays (what the engine's decode runs); the
reference as eager calls. Bandwidth counts the fewest bytes the kernel must move: each sequence's K and
V once (codes and scale/zero when quantized), q read once, out written once; the ceiling is a large
device-to-device copy measured here.
"""

from __future__ import annotations

import argparse

import torch
import triton

from interndeploy.kernels import reference
from interndeploy.kernels.decode_attention import decode_attention, pick_num_splits
from interndeploy.quant.kv import KVCacheLayout
from interndeploy.testing.attention import assign_block_tables, make_decode_metadata

HQ, HKV, D, BLOCK = 32, 8, 128, 64
DTYPE = torch.bfloat16
QUANT_POLICY = 0
CUDA_CORES = None


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy."""
    src = torch.randn(1 << 29, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def setup(batch: int, ctx: int):
    tables, num_blocks = assign_block_tables([ctx] * batch, BLOCK, seed=batch)
    k_cache, v_cache, k_sz, v_sz = KVCacheLayout(QUANT_POLICY, D, DTYPE).allocate(num_blocks, BLOCK, HKV, "cuda")
    if QUANT_POLICY:
        k_cache.random_(0, 256)
        v_cache.random_(0, 256)
        for sz in (k_sz, v_sz):
            sz[..., 0].uniform_(0.005, 0.02)
            sz[..., 1].normal_()
        scales = {"k_scale_zero": k_sz, "v_scale_zero": v_sz}
    else:
        k_cache.normal_()
        v_cache.normal_()
        scales = {}
    meta = make_decode_metadata([ctx] * batch, BLOCK, tables, "cuda")
    q = torch.randn(batch, HQ, D, dtype=DTYPE, device="cuda")
    return q, k_cache, v_cache, meta, scales


def graph_ms(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


SCALE = D**-0.5


def bench_shape(batch: int, ctx: int, ceiling: float, sweep: bool) -> None:
    q, k_cache, v_cache, meta, scales = setup(batch, ctx)
    out = torch.empty_like(q)

    def run(**kw) -> None:
        decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, SCALE, out=out, **scales,
                         cuda_cores=CUDA_CORES, **kw)

    def run_reference() -> torch.Tensor:
        return reference.paged_attention(q, k_cache, v_cache, meta, SCALE, *scales.values())

    run()
    err = (out.float() - run_reference().float()).abs().max().item()
    assert err < (6e-2 if QUANT_POLICY else 3e-2), f"batch {batch} ctx {ctx}: max error {err}"
    ms = graph_ms(run)
    ref_ms = triton.testing.do_bench(run_reference, warmup=5, rep=50, return_mode="median")
    kv_bytes = KVCacheLayout(QUANT_POLICY, D, DTYPE).bytes_per_token_head
    bw = (2 * batch * ctx * HKV * kv_bytes + 2 * q.numel() * 2) / (ms * 1e-3)
    splits = pick_num_splits(batch * HKV, meta.block_tables.shape[1] * BLOCK, q.device)
    print(
        f"{batch:>5} {ctx:>5} {splits:>6} {ms * 1e3:>10.1f} {bw / 1e12:>6.2f} {100 * bw / ceiling:>6.1f}% "
        f"{ref_ms * 1e3:>10.1f} {ref_ms / ms:>7.1f}x"
    )
    if sweep and ctx == 4096:
        for block_n in (16, 32, 64, 128):
            for warps in (1, 2, 4, 8):
                t = graph_ms(lambda n=block_n, w=warps: run(block_n=n, num_warps=w))
                print(f"      sweep block_n={block_n:<3} num_warps={warps}: {t * 1e3:.1f} us")


def main() -> None:
    global QUANT_POLICY, HKV, CUDA_CORES
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true", help="also time block_n / num_warps variants")
    parser.add_argument("--quant-policy", type=int, choices=[0, 4, 8], default=0, help="KV cache int4 / int8")
    parser.add_argument("--kv-heads", type=int, default=HKV, help="kv heads (32 = MHA)")
    parser.add_argument("--cuda-cores", choices=["auto", "on", "off"], default="auto",
                        help="the MHA kernel on CUDA cores (auto: when Hq == Hkv)")
    args = parser.parse_args()
    QUANT_POLICY, HKV = args.quant_policy, args.kv_heads
    CUDA_CORES = {"auto": None, "on": True, "off": False}[args.cuda_cores]
    props = torch.cuda.get_device_properties(0)
    ceiling = copy_bandwidth()
    print(f"{props.name}, {props.multi_processor_count} SMs; device-to-device copy {ceiling / 1e12:.2f} TB/s")
    kv = KVCacheLayout(QUANT_POLICY, D, DTYPE).describe()
    print(f"decode attention: Hq={HQ} Hkv={HKV} D={D} bf16, KV {kv}, block_size={BLOCK}")
    head = ("batch", "ctx", "splits", "triton us", "TB/s", "% copy", "ref us", "speedup")
    print("{:>5} {:>5} {:>6} {:>10} {:>6} {:>7} {:>10} {:>8}".format(*head))
    for batch in (1, 32, 128):
        for ctx in (512, 4096):
            bench_shape(batch, ctx, ceiling, args.sweep)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
