"""Block-wise FP8 checkpoints: tiny Qwen3 / Qwen3-MoE models quantized in the test, read by our engine.

On CPU the weights are dequantized once at load: logits equal transformers' with the dequantized weights.
Under `emulate_fp8()` they stay FP8 and run through the w8a8 twins of the Triton kernels (activations
quantized per token group): within FP8 error of that dequantized reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interndeploy.kernels.reference_fp8 import FP8_DTYPE
from interndeploy.models.loader import WeightLoadError
from interndeploy.quant.fp8 import Fp8Config, Fp8ConfigError, Fp8LinearMethod, Fp8MoEMethod, emulate_fp8
from interndeploy.testing.compare import assert_matches_hf, hf_logits, load_our_model, random_prompts, run_paged
from interndeploy.testing.tiny_archs import build_qwen3_dir, build_qwen3_moe_dir, quantize_dir_fp8
from interndeploy.testing.tiny_models import hf_reference_model

FP8_REL = 0.08  # relative logit error of w8a8 e4m3 (3 mantissa bits) through a 2-layer toy model


@pytest.fixture(scope="module")
def fp8_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp8")
    return {
        "qwen3": quantize_dir_fp8(build_qwen3_dir(root / "qwen3"), root / "qwen3-fp8", (16, 16)),
        "qwen3_moe": quantize_dir_fp8(build_qwen3_moe_dir(root / "moe"), root / "moe-fp8", (32, 16)),
    }


def test_checkpoint_is_block_fp8(fp8_dirs: dict[str, Path]) -> None:
    from safetensors import safe_open

    d = fp8_dirs["qwen3_moe"]
    names = {}
    for path in d.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            names.update({n: f.get_slice(n).get_dtype() for n in f.keys()})
    assert names["model.layers.0.self_attn.q_proj.weight"] == "F8_E4M3"
    assert names["model.layers.0.mlp.experts.5.down_proj.weight"] == "F8_E4M3"
    assert names["model.layers.0.mlp.experts.5.down_proj.weight_scale_inv"] == "F32"
    assert names["model.layers.0.mlp.gate.weight"] == "F32"  # the router stays in high precision
    assert json.loads((d / "config.json").read_text())["quantization_config"]["weight_block_size"] == [32, 16]


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_cpu_dequantized_path_equals_dequantized_reference(fp8_dirs: dict[str, Path], arch: str) -> None:
    assert_matches_hf(fp8_dirs[arch], [7, 1, 13, 4])
    model = load_our_model(fp8_dirs[arch])
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv.quant_method, Fp8LinearMethod)
    assert qkv.weight.dtype == torch.float32 and not hasattr(qkv, "weight_scale_inv")  # dequantized once


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_w8a8_path_is_within_fp8_error(fp8_dirs: dict[str, Path], arch: str) -> None:
    with emulate_fp8():
        model = load_our_model(fp8_dirs[arch])
    layer = model.model.layers[0]
    assert layer.self_attn.qkv_proj.weight.dtype == FP8_DTYPE
    assert layer.self_attn.qkv_proj.weight_scale_inv.shape == ((4 + 2 + 2) * 32 // (16 if arch == "qwen3" else 32),
                                                               64 // 16)  # fmt: skip
    if arch == "qwen3_moe":
        assert isinstance(layer.mlp.experts.quant_method, Fp8MoEMethod)
        assert layer.mlp.experts.w13_weight.dtype == FP8_DTYPE
        assert layer.mlp.gate.weight.dtype == torch.float32
    hf = hf_reference_model(fp8_dirs[arch])
    prompts = random_prompts(hf.config.vocab_size, [9, 14, 3])
    run = run_paged(model, prompts, decode_steps=3)
    agree = []
    for b, prompt in enumerate(prompts):
        ref = hf_logits(hf, prompt)
        assert float((run.prefill_logits[b] - ref).norm() / ref.norm()) < FP8_REL
        agree.append((run.prefill_logits[b].argmax(-1) == ref.argmax(-1)).float().mean())
    assert float(torch.stack(agree).mean()) > 0.8


def test_fp8_checkpoint_is_close_to_the_unquantized_model(tmp_path: Path) -> None:
    plain = build_qwen3_dir(tmp_path / "m")
    quantized = quantize_dir_fp8(plain, tmp_path / "q", (32, 32))
    prompts = random_prompts(512, [11])
    a = run_paged(load_our_model(plain), prompts, decode_steps=0).prefill_logits[0]
    b = run_paged(load_our_model(quantized), prompts, decode_steps=0).prefill_logits[0]
    assert 0 < float((a - b).norm() / a.norm()) < FP8_REL


def test_float8_tensor_without_quantization_config_is_refused(fp8_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    d = shutil.copytree(fp8_dirs["qwen3"], tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    del config["quantization_config"]
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightLoadError, match=r"float8_e4m3fn but the model expects torch.float32.*no FP8"):
        load_our_model(d)


@pytest.mark.parametrize(
    ("qc", "message"),
    [
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "one scale per tensor"),
        ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]}, "static"),
        ({"quant_method": "fp8", "weight_block_size": [128, 100]}, "block_k must be a multiple of 16"),
    ],
)
def test_config_errors_say_what_is_unsupported(qc: dict, message: str) -> None:
    with pytest.raises(Fp8ConfigError, match=message):
        Fp8Config.from_dict(qc)
    assert Fp8Config.from_dict({"quant_method": "fp8", "weight_block_size": [128, 128]}).block == (128, 128)


def test_moe_intermediate_must_hold_whole_blocks(tmp_path: Path) -> None:
    d = quantize_dir_fp8(build_qwen3_moe_dir(tmp_path / "m", moe_intermediate_size=24), tmp_path / "q", (16, 16))
    with pytest.raises(Fp8ConfigError, match="MoE intermediate size 24"):
        load_our_model(d)
