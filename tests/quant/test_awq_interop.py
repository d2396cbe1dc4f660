"""Reading AWQ directories written by others: tensors packed exactly as AutoAWQ packs them, from known int4 values.

Each test builds a float model directory, replaces every decoder linear by random known (q, z, s), writes the
AWQ directory with AutoAWQ's packing loop (WQLinear_GEMM.from_linear, transcribed; autoawq is not needed) and a
float directory holding (q - z) * s. Our loader must dequantize to exactly those values, and our AWQ model must
produce transformers' logits on the float directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from interndeploy.models.loader import iter_checkpoint
from interndeploy.quant.awq_linear import AWQLinearMethod
from interndeploy.testing.compare import hf_logits, load_our_model, random_prompts, run_paged
from interndeploy.testing.tiny_models import build_internlm2_dir, build_llama_dir, hf_reference_model

GROUP = 32


def autoawq_pack(intweight: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's loop: [rows, cols] int -> [rows, cols / 8] int32, column c |= v[:, 8c + order[i]] << 4i."""
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    intweight = intweight.to(torch.int32)
    packed = torch.zeros((intweight.shape[0], intweight.shape[1] // 8), dtype=torch.int32)
    for col in range(intweight.shape[1] // 8):
        for i in range(8):
            packed[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)
    return packed


def _is_linear(name: str, t: torch.Tensor) -> bool:
    return ".layers." in name and name.endswith(".weight") and t.dim() == 2


def awqify(float_dir: Path, awq_dir: Path, ref_dir: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write the AWQ and the float reference directories; return the known float weights by checkpoint name."""
    g = torch.Generator().manual_seed(seed)
    awq: dict[str, torch.Tensor] = {}
    ref: dict[str, torch.Tensor] = {}
    known: dict[str, torch.Tensor] = {}
    for name, t in iter_checkpoint(float_dir):
        if not _is_linear(name, t):
            awq[name] = t.half() if t.is_floating_point() else t
            ref[name] = t.half().float() if t.is_floating_point() else t  # the same fp16-rounded values
            continue
        out, inp = t.shape
        q = torch.randint(0, 16, (inp, out), generator=g)  # AutoAWQ's intweight, already transposed: [in, out]
        z = torch.randint(0, 16, (inp // GROUP, out), generator=g)
        s = (torch.rand(inp // GROUP, out, generator=g) * 0.02 + 0.005).half()
        base = name.removesuffix(".weight")
        awq[f"{base}.qweight"], awq[f"{base}.qzeros"], awq[f"{base}.scales"] = autoawq_pack(q), autoawq_pack(z), s
        w_t = (q - z.repeat_interleave(GROUP, 0)).float() * s.float().repeat_interleave(GROUP, 0)
        known[name] = ref[name] = w_t.t().contiguous()
    config = json.loads((float_dir / "config.json").read_text())
    for d, state, extra in ((awq_dir, awq, {"quantization_config": {"quant_method": "awq", "bits": 4,
                             "group_size": GROUP, "zero_point": True, "version": "gemm"}, "torch_dtype": "float16"}),
                            (ref_dir, ref, {"torch_dtype": "float32"})):
        d.mkdir(parents=True)
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps({**config, **extra}))
        for f in float_dir.iterdir():  # tokenizer and generation config
            if f.suffix != ".safetensors" and not f.name.endswith(".index.json") and f.name != "config.json":
                shutil.copy2(f, d / f.name)
    return known


def _check_against_hf(awq_dir: Path, ref_dir: Path) -> None:
    ours, hf = load_our_model(awq_dir), hf_reference_model(ref_dir)
    prompts = random_prompts(hf.config.vocab_size, [9, 4])
    run = run_paged(ours, prompts, decode_steps=2)
    for b, prompt in enumerate(prompts):
        torch.testing.assert_close(run.prefill_logits[b], hf_logits(hf, prompt), atol=2e-4, rtol=0)


def test_llama_autoawq_directory(tmp_path: Path) -> None:
    """Separate q/k/v and gate/up tensors land in our packed qkv_proj / gate_up_proj at packed offsets."""
    float_dir = build_llama_dir(tmp_path / "fp", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                num_key_value_heads=2, attention_bias=True)
    known = awqify(float_dir, tmp_path / "awq", tmp_path / "ref")
    model = load_our_model(tmp_path / "awq")
    attn = model.model.layers[1].self_attn
    assert isinstance(attn.qkv_proj.quant_method, AWQLinearMethod)
    w = attn.qkv_proj.quant_method.float_weight(attn.qkv_proj, torch.float32)
    p = "model.layers.1.self_attn."
    expected = torch.cat([known[p + "q_proj.weight"], known[p + "k_proj.weight"], known[p + "v_proj.weight"]])
    torch.testing.assert_close(w, expected, rtol=0, atol=0)
    mlp = model.model.layers[0].mlp
    w = mlp.gate_up_proj.quant_method.float_weight(mlp.gate_up_proj, torch.float32)
    p = "model.layers.0.mlp."
    expected = torch.cat([known[p + "gate_proj.weight"], known[p + "up_proj.weight"]])
    torch.testing.assert_close(w, expected, rtol=0, atol=0)
    _check_against_hf(tmp_path / "awq", tmp_path / "ref")


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (4, 4)], ids=["gqa", "mha"])
def test_internlm2_lmdeploy_directory(tmp_path: Path, heads: int, kv_heads: int) -> None:
    """InternLM2's grouped wqkv, packed along its (grouped) output dim, is un-grouped on load."""
    float_dir = build_internlm2_dir(tmp_path / "fp", hidden_size=128, intermediate_size=128,
                                    num_attention_heads=heads, num_key_value_heads=kv_heads, bias=True)
    known = awqify(float_dir, tmp_path / "awq", tmp_path / "ref")
    model = load_our_model(tmp_path / "awq")
    qkv = model.model.layers[0].self_attn.qkv_proj
    d = 128 // heads
    grouped = known["model.layers.0.attention.wqkv.weight"].view(kv_heads, heads // kv_heads + 2, d, 128)
    expected = torch.cat([grouped[:, :-2].flatten(0, 2), grouped[:, -2].flatten(0, 1), grouped[:, -1].flatten(0, 1)])
    torch.testing.assert_close(qkv.quant_method.float_weight(qkv, torch.float32), expected, rtol=0, atol=0)
    _check_against_hf(tmp_path / "awq", tmp_path / "ref")
