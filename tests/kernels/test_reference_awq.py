"""AWQ int4 packing and the torch dequantize / matmul twin, against loops written from AutoAWQ's description."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels.reference_awq import AWQ_ORDER, awq_dequantize, awq_gemm, pack_int4, unpack_int4


def autoawq_pack(q: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's WQLinear_GEMM packing, as documented: int32 column c |= q[:, 8c + order[i]] << 4i."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    q = q.to(torch.int32)
    packed = torch.zeros(q.shape[0], q.shape[1] // 8, dtype=torch.int32)
    for col in range(packed.shape[1]):
        for i in range(8):
            packed[:, col] |= q[:, col * 8 + order[i]] << (i * 4)
    return packed


def test_order_constant() -> None:
    assert AWQ_ORDER == (0, 2, 4, 6, 1, 3, 5, 7)


def test_pack_known_values() -> None:
    # columns 0..7 hold 0..7: nibble p holds column AWQ_ORDER[p] -> 0x75316420
    packed = pack_int4(torch.arange(8).view(1, 8))
    assert packed.dtype == torch.int32 and packed.shape == (1, 1)
    assert int(packed) & 0xFFFFFFFF == 0x75316420
    top = pack_int4(torch.full((1, 8), 15))  # every bit set: -1 as int32
    assert int(top) == -1


@pytest.mark.parametrize("shape", [(1, 8), (5, 64), (3, 2, 40)])
def test_round_trip_and_autoawq_equal(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, shape, generator=g)
    packed = pack_int4(q)
    assert torch.equal(unpack_int4(packed), q.to(torch.int32))
    flat = q.reshape(-1, shape[-1])
    assert torch.equal(packed.reshape(-1, shape[-1] // 8), autoawq_pack(flat))


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_int4(torch.zeros(2, 12, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_int4(torch.full((1, 8), 16))


@pytest.mark.parametrize("group", [16, 32, 64])
def test_dequantize_matches_loop(group: int) -> None:
    g = torch.Generator().manual_seed(1)
    k, n = 64, 24
    q = torch.randint(0, 16, (k, n), generator=g)
    z = torch.randint(0, 16, (k // group, n), generator=g)
    s = torch.rand(k // group, n, generator=g).half()
    w = awq_dequantize(pack_int4(q), s, pack_int4(z), torch.float32)
    expected = torch.empty(k, n)
    for i in range(k):
        expected[i] = (q[i] - z[i // group]).float() * s[i // group].float()
    torch.testing.assert_close(w, expected, rtol=0, atol=0)
    assert awq_dequantize(pack_int4(q), s, pack_int4(z)).dtype == torch.float16

    x = torch.randn(3, k, generator=g)
    torch.testing.assert_close(awq_gemm(x, pack_int4(q), s.float(), pack_int4(z)), x @ expected)


def test_dequantize_rejects_mismatched_shapes() -> None:
    qw = pack_int4(torch.zeros(64, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="do not agree"):
        awq_dequantize(qw, torch.ones(2, 16), pack_int4(torch.zeros(3, 16, dtype=torch.int32)))
