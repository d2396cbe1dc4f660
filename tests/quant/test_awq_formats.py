"""--model-format against what config.json declares, and the AWQ quant method in the linear layers."""

from __future__ import annotations

import argparse

import pytest
import torch

from interndeploy.cli.args import add_engine_args, engine_config_from_args
from interndeploy.config import ConfigError
from interndeploy.kernels.reference_awq import awq_dequantize, pack_int4
from interndeploy.layers.linear import ColumnLinear, LinearMethod, MergedColumnLinear, QKVLinear, RowLinear
from interndeploy.quant.awq_linear import AWQConfig, AWQConfigError, AWQLinearMethod
from interndeploy.quant.formats import linear_methods, resolve_weight_format

AWQ_CFG = {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                   "version": "gemm"}}


@pytest.mark.parametrize(
    ("config", "asked", "dummy", "expected"),
    [({}, None, False, "hf"), ({}, "hf", False, "hf"), ({}, "llama", False, "hf"), (AWQ_CFG, None, False, "awq"),
     (AWQ_CFG, "awq", False, "awq"), ({}, "awq", True, "awq")],
)
def test_resolve(config: dict, asked: str | None, dummy: bool, expected: str) -> None:
    assert resolve_weight_format(config, asked, "/m", dummy) == expected


@pytest.mark.parametrize(
    ("config", "asked", "message"),
    [(AWQ_CFG, "hf", "holds awq quantized weights.*use --model-format awq or leave --model-format out"),
     ({}, "awq", "no quantization_config.*interndeploy lite auto_awq"),
     (AWQ_CFG, "fp8", "holds awq weights; use --model-format awq"),
     ({"quantization_config": {"quant_method": "gptq"}}, None, "weight format gptq .* is not supported")],
)
def test_resolve_errors(config: dict, asked: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_weight_format(config, asked, "/m")


def test_awq_config_validation() -> None:
    assert AWQConfig.from_dict({"w_bit": 4, "q_group_size": 64, "version": "GEMM"}).group_size == 64
    with pytest.raises(AWQConfigError, match="8 bits"):
        AWQConfig.from_dict({"bits": 8})
    with pytest.raises(AWQConfigError, match="gemv"):
        AWQConfig.from_dict({"version": "gemv"})
    with pytest.raises(AWQConfigError, match="multiple of the group size"):
        ColumnLinear(100, 64, quant_method=AWQLinearMethod(AWQConfig(group_size=32)))


def test_cli_accepts_model_format_awq() -> None:
    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert engine_config_from_args(p.parse_args(["--model-format", "awq"])).model_format == "awq"
    with pytest.raises(ConfigError, match="not available yet"):
        engine_config_from_args(p.parse_args(["--model-format", "gptq"]))


def _packed(out: int, inp: int, group: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "qweight": pack_int4(torch.randint(0, 16, (inp, out), generator=g)),
        "qzeros": pack_int4(torch.randint(0, 16, (inp // group, out), generator=g)),
        "scales": torch.rand(inp // group, out, generator=g),
    }


def _load(layer: torch.nn.Module, tensors: dict[str, torch.Tensor], shard: object = None) -> None:
    for name, t in tensors.items():
        p = getattr(layer, name)
        p.weight_loader(p, t) if shard is None else p.weight_loader(p, t, shard)


def _deq(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return awq_dequantize(t["qweight"], t["scales"], t["qzeros"], torch.float32).t()  # [out, in]


def test_layers_take_the_method_and_load_packed_shards() -> None:
    """Inside linear_methods the layers get AWQ parameters; packed modules place q/k/v and gate/up shards at
    offsets divided by the pack factor; the CPU forward equals x @ dequantized^T."""
    with linear_methods(AWQ_CFG, "awq"):
        qkv = QKVLinear(64, 16, 4, 2)
        gate_up = MergedColumnLinear(64, [96, 96])
        down = RowLinear(96, 64)
    plain = ColumnLinear(64, 64)
    assert isinstance(qkv.quant_method, AWQLinearMethod) and type(plain.quant_method) is LinearMethod
    assert qkv.qweight.shape == (64, (4 + 2 + 2) * 16 // 8) and qkv.qweight.dtype == torch.int32
    assert not hasattr(qkv, "weight") or qkv.weight is None

    q, k, v = _packed(64, 64, 32, 1), _packed(32, 64, 32, 2), _packed(32, 64, 32, 3)
    for part, sid in ((q, "q"), (k, "k"), (v, "v")):
        _load(qkv, part, sid)
    gate, up, dn = _packed(96, 64, 32, 4), _packed(96, 64, 32, 5), _packed(64, 96, 32, 6)
    _load(gate_up, gate, 0)
    _load(gate_up, up, 1)
    _load(down, dn)
    x = torch.randn(5, 64)
    for layer, parts in ((qkv, [q, k, v]), (gate_up, [gate, up])):
        layer.quant_method.process_weights_after_loading(layer)
        expected = torch.cat([_deq(p) for p in parts])
        torch.testing.assert_close(layer(x), x @ expected.t(), rtol=1e-5, atol=1e-5)
    down.quant_method.process_weights_after_loading(down)
    xd = torch.randn(5, 96)
    torch.testing.assert_close(down(xd), xd @ _deq(dn).t(), rtol=1e-5, atol=1e-5)
