"""The AWQ algorithm on one linear layer: quantize / pack agree, AWQ scaling beats round-to-nearest, clipping helps."""

from __future__ import annotations

import pytest
import torch

from interndeploy.kernels.reference_awq import awq_dequantize
from interndeploy.quant.awq import (
    fake_quantize,
    pack_awq,
    quantize,
    search_clip,
    search_scales,
    smooth_scales,
    weight_channel_stat,
)

BITS, GROUP = 4, 64


def _outlier_layer(seed: int = 0, tokens: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W [256, 512] and calibration / held-out inputs whose channels 0..7 carry 30x larger activations
    (the salient channels AWQ protects), as LLM activations do."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(256, 512, generator=g) * 0.05
    scale = torch.ones(512)
    scale[torch.randperm(512, generator=g)[:8]] = 30.0
    x = torch.randn(2 * tokens, 512, generator=g) * scale
    return w, x[:tokens], x[tokens:]


def _error(x: torch.Tensor, w: torch.Tensor, w_q: torch.Tensor) -> float:
    ref = x @ w.t()
    return float((x @ w_q.t() - ref).pow(2).mean() / ref.pow(2).mean())


@pytest.mark.parametrize("sym", [False, True])
def test_pack_dequantizes_to_fake_quantize(sym: bool) -> None:
    w = torch.randn(48, 128) * 0.1
    packed = pack_awq(w, BITS, 32, sym)
    assert packed["qweight"].shape == (128, 6) and packed["qweight"].dtype == torch.int32
    assert packed["qzeros"].shape == (4, 6) and packed["scales"].shape == (4, 48)
    assert packed["scales"].dtype == torch.float16
    deq = awq_dequantize(packed["qweight"], packed["scales"], packed["qzeros"], torch.float32).t()
    torch.testing.assert_close(deq, fake_quantize(w, BITS, 32, sym), rtol=0, atol=0)
    q, _, zeros = quantize(w, BITS, 32, sym)
    assert int(q.min()) >= 0 and int(q.max()) <= 15
    if sym:
        assert bool((zeros == 8).all())
    assert float((deq - w).abs().max()) < 0.1 * float(w.abs().max())


def test_awq_beats_round_to_nearest_on_outlier_channels() -> None:
    w, calib, held_out = _outlier_layer()
    rtn = _error(held_out, w, fake_quantize(w, BITS, GROUP, False))
    x_stat, w_stat = calib.abs().mean(0), weight_channel_stat(w, GROUP)
    t, ratio = search_scales(calib, w, x_stat, w_stat, BITS, GROUP, False)
    assert ratio is not None and float(t.max()) > 1  # found a scaling, and it scales salient channels up
    awq = _error(held_out, w, fake_quantize(w * t, BITS, GROUP, False) / t)
    assert awq < 0.7 * rtn, (awq, rtn)
    # LMDeploy's default (no search): ratio 0.5 on max |x| also beats RTN here
    t_fixed = smooth_scales(calib.abs().amax(0), w_stat, 0.5)
    fixed = _error(held_out, w, fake_quantize(w * t_fixed, BITS, GROUP, False) / t_fixed)
    assert fixed < rtn, (fixed, rtn)


def test_search_never_worse_than_no_scaling() -> None:
    """On inputs without outliers the search may keep t = 1 (ratio None), but never does worse than RTN."""
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(64, 128, generator=g), torch.randn(512, 128, generator=g)
    t, ratio = search_scales(x, w, x.abs().mean(0), weight_channel_stat(w, 32), BITS, 32, False)
    assert _error(x, w, fake_quantize(w * t, BITS, 32, False) / t) <= _error(x, w, fake_quantize(w, BITS, 32, False))
    if ratio is None:
        assert bool((t == 1).all())


def test_gqa_expand_scales_v_channels() -> None:
    """Scales searched on v channels [kv, d] act on o_proj inputs [heads, d] through `expand`."""
    w, x, _ = _outlier_layer(seed=1)
    kv, rep, d = 4, 2, 64  # 512 = 4 kv heads x 2 q heads x 64
    x_stat = x.abs().mean(0).view(kv, rep, d).mean(1).flatten()

    def expand(t: torch.Tensor) -> torch.Tensor:
        return t.view(kv, 1, d).expand(kv, rep, d).flatten()

    t, _ = search_scales(x, w, x_stat, weight_channel_stat(w, GROUP).view(kv, rep, d).mean(1).flatten(),
                         BITS, GROUP, False, expand)
    assert t.shape == (kv * d,)
    te = expand(t)
    rtn = _error(x, w, fake_quantize(w, BITS, GROUP, False))
    assert _error(x, w, fake_quantize(w * te, BITS, GROUP, False) / te) <= rtn


def test_clip_lowers_error_on_calibration_tokens() -> None:
    w, calib, _ = _outlier_layer(seed=2, tokens=512)
    w = w.clone()
    w[:, 5] *= 8  # a few large weights stretch their groups' ranges
    clipped = search_clip(calib, w, BITS, GROUP, False)
    assert float(clipped.abs().max()) <= float(w.abs().max())
    before = _error(calib, w, fake_quantize(w, BITS, GROUP, False))
    after = _error(calib, w, fake_quantize(clipped, BITS, GROUP, False))
    assert after <= before


def test_smooth_scales_normalised_and_dead_channels() -> None:
    x_stat = torch.tensor([0.0, 1.0, 4.0, 16.0])
    t = smooth_scales(x_stat, torch.ones(4), 0.5)
    assert float(t[0]) == 1.0  # a channel that never fires keeps scale 1
    live = t[1:]
    torch.testing.assert_close(live.max() * live.min(), torch.tensor(1.0))
