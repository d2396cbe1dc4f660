"""store_kvcache + decode_attention captured once in a CUDA graph, replayed with new inputs (fp and int8 / int4
caches).

The replays change what the graph cannot see on the host: sequence lengths (1 to the table's limit, and
0 for a padding row), block tables, slots (-1 for padding) and the q/k/v values.
"""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels import reference
from interndeploy.kernels.decode_attention import decode_attention
from interndeploy.kernels.store_kvcache import store_kvcache
from interndeploy.quant.kv import KVCacheLayout
from interndeploy.testing.attention import make_decode_metadata

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("quant_policy", [0, 8, 4])
@pytest.mark.parametrize(("hq", "hkv", "d", "block_size"), [(32, 8, 128, 16), (16, 2, 64, 64)])
def test_capture_and_replay(
    cuda: str, assert_attention_close, quant_policy: int, hq: int, hkv: int, d: int, block_size: int
) -> None:
    torch.manual_seed(0)
    dtype, batch, max_blocks, num_blocks = torch.bfloat16, 6, 96, 700
    k_cache, v_cache, k_sz, v_sz = KVCacheLayout(quant_policy, d, dtype).allocate(num_blocks, block_size, hkv, cuda)
    if quant_policy:  # random codes, scales and zero points: values within about [-3, 4] as real K/V
        qmax = 2**quant_policy - 1
        for c in (k_cache, v_cache):
            c.copy_(torch.randint(0, 256, c.shape, dtype=torch.uint8))
        for sz in (k_sz, v_sz):
            sz.copy_(torch.stack([torch.rand(sz.shape[:-1]) * 0.75 / qmax, torch.randn(sz.shape[:-1])], -1))
    else:
        k_cache.copy_(torch.randn(k_cache.shape))
        v_cache.copy_(torch.randn(v_cache.shape))
        k_sz = v_sz = None
    # static inputs of the graph, refilled before each replay
    q = torch.zeros(batch, hq, d, dtype=dtype, device=cuda)
    k = torch.zeros(batch, hkv, d, dtype=dtype, device=cuda)
    v = torch.zeros_like(k)
    slots = torch.full((batch,), -1, dtype=torch.int64, device=cuda)
    seq_lens = torch.ones(batch, dtype=torch.int32, device=cuda)
    tables = torch.zeros(batch, max_blocks, dtype=torch.int32, device=cuda)
    out = torch.zeros(batch, hq, d, dtype=dtype, device=cuda)

    def step() -> None:
        store_kvcache(k, v, k_cache, v_cache, slots, k_sz, v_sz)
        decode_attention(q, k_cache, v_cache, tables, seq_lens, d**-0.5, k_scale_zero=k_sz, v_scale_zero=v_sz, out=out)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    max_len = max_blocks * block_size
    for trial, lens in enumerate([[1, 2, max_len, 17, 300, 0], [max_len - 5, 1, 64, 65, 1000, 0], [5] * 5 + [0]]):
        gen = torch.Generator().manual_seed(trial)
        real = [n for n in lens if n > 0]
        perm = torch.randperm(num_blocks, generator=gen).tolist()
        host_tables = [perm[i * max_blocks : (i + 1) * max_blocks] for i in range(len(real))]
        meta = make_decode_metadata(real, block_size, host_tables, cuda)
        n = len(real)
        q.copy_(torch.randn(batch, hq, d, generator=gen).to(dtype))
        k.copy_(torch.randn(batch, hkv, d, generator=gen).to(dtype))
        v.copy_(torch.randn(batch, hkv, d, generator=gen).to(dtype))
        slots.fill_(-1)
        slots[:n] = meta.slot_mapping
        seq_lens.zero_()
        seq_lens[:n] = meta.seq_lens
        tables.zero_()
        tables[:n] = meta.block_tables
        ref_k, ref_v = k_cache.clone(), v_cache.clone()
        ref_sz = (k_sz.clone(), v_sz.clone()) if quant_policy else (None, None)
        reference.store_kvcache(k[:n], v[:n], ref_k, ref_v, meta.slot_mapping, *ref_sz)
        expected = reference.paged_attention(q[:n], ref_k, ref_v, meta, d**-0.5, *ref_sz)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
        if quant_policy:
            assert torch.equal(k_sz, ref_sz[0]) and torch.equal(v_sz, ref_sz[1])
        assert_attention_close(out[:n], expected)
        assert (out[n:] == 0).all()  # padding rows: zeros, not NaN
