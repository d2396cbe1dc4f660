"""`auto_awq` end to end on tiny models: the directory it writes, serving it, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from interndeploy.config import ConfigError, EngineConfig
from interndeploy.model_dir import load_model_info
from interndeploy.quant.auto_awq import _load_float_model, auto_awq, smooth_layer
from interndeploy.quant.awq_layouts import awq_layout
from interndeploy.quant.calibrate import LayerCalibrator
from interndeploy.quant.checkpoint_io import CheckpointReader, ShardWriter
from interndeploy.testing.compare import load_our_model, random_prompts, run_paged
from interndeploy.testing.tiny_models import build_internlm2_dir, build_llama_dir
from interndeploy.tokenizer import Tokenizer

SUBJECTS = ["the river", "a small fox", "the old library", "our team", "the quiet engine", "a red kite"]
VERBS = ["carries", "finds", "keeps", "watches", "builds", "remembers"]
OBJECTS = ["the morning light", "seven stones", "a long story", "the last train", "warm bread", "the open sea"]


def _text(seed: int, sentences: int) -> str:
    import random

    r = random.Random(seed)
    return " ".join(
        f"{r.choice(SUBJECTS).capitalize()} {r.choice(VERBS)} {r.choice(OBJECTS)}." for _ in range(sentences)
    )


@pytest.fixture(scope="module")
def fp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_internlm2_dir(tmp_path_factory.mktemp("fp") / "m", hidden_size=128, intermediate_size=256,
                               num_attention_heads=4, num_key_value_heads=2, seed=3)


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(_text(0, 300), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def awq_dir(fp_dir: Path, calib_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("awq") / "m-w4a16"
    auto_awq(str(fp_dir), work_dir=str(out), calib_dataset=str(calib_file), calib_samples=4, calib_seqlen=32,
             w_group_size=32, search_scale=True, device="cpu")
    return out


def test_output_directory(fp_dir: Path, awq_dir: Path) -> None:
    config = json.loads((awq_dir / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                             "version": "gemm"}
    assert config["torch_dtype"] == "float16" and config["architectures"] == ["InternLM2ForCausalLM"]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (awq_dir / name).read_bytes() == (fp_dir / name).read_bytes()
    tensors = {}
    for f in awq_dir.glob("*.safetensors"):
        with safe_open(f, framework="pt") as sf:
            tensors.update({k: sf.get_tensor(k) for k in sf.keys()})
    p = "model.layers.1."
    # InternLM2 names and the grouped wqkv: out = (4 q + 2 k + 2 v heads) x 32 = 256
    qweight, qzeros, scales = (tensors[f"{p}attention.wqkv.{n}"] for n in ("qweight", "qzeros", "scales"))
    assert qweight.shape == (128, 32) and qweight.dtype == qzeros.dtype == torch.int32
    assert qzeros.shape == (4, 32)
    assert scales.shape == (4, 256) and scales.dtype == torch.float16
    assert tensors[p + "feed_forward.w2.qweight"].shape == (256, 16)
    assert not any(k.endswith("wqkv.weight") or k.endswith("w1.weight") for k in tensors)
    assert tensors[p + "attention_norm.weight"].dtype == torch.float16
    assert tensors["output.weight"].dtype == tensors["model.tok_embeddings.weight"].dtype == torch.float16


def _held_out_nll(model: torch.nn.Module, ids: list[int]) -> float:
    logits = run_paged(model, [ids], decode_steps=0).prefill_logits[0]
    return float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])))


def test_logits_close_and_perplexity(fp_dir: Path, awq_dir: Path) -> None:
    fp, q = load_our_model(fp_dir), load_our_model(awq_dir)
    prompts = random_prompts(fp.config.vocab_size, [24, 7])
    a, b = run_paged(fp, prompts, decode_steps=2), run_paged(q, prompts, decode_steps=2)
    for x, y in zip(a.prefill_logits, b.prefill_logits, strict=True):
        assert float((x - y).norm() / x.norm()) < 0.35
    ids = Tokenizer.from_dir(fp_dir).encode(_text(99, 12), add_bos=False)[:120]
    ppl_fp, ppl_q = (torch.tensor(_held_out_nll(m, ids)).exp() for m in (fp, q))
    assert ppl_q < 1.10 * ppl_fp, (float(ppl_fp), float(ppl_q))


def test_pipeline_detects_awq_and_generates(awq_dir: Path) -> None:
    from interndeploy import GenerationConfig, pipeline
    from interndeploy.worker.kv_cache import memory_report

    for cfg in (EngineConfig(block_size=16, cpu_kv_budget_gib=0.05),
                EngineConfig(block_size=16, cpu_kv_budget_gib=0.05, model_format="awq")):
        pipe = pipeline(str(awq_dir), backend_config=cfg)
        try:
            runner = pipe.engine.engine.runner
            assert runner.weight_format == "awq"
            out = pipe("The river carries", gen_config=GenerationConfig(max_new_tokens=6, do_sample=False))
            assert out.generate_token_len > 0
            # the weights count at int4: qweight holds in * out / 2 bytes, plus per-group scales and zeros
            qkv = runner.model.model.layers[0].self_attn.qkv_proj
            assert qkv.qweight.numel() * 4 == 128 * 256 // 2
            linear_bytes = sum(p.numel() * p.element_size() for n, p in runner.model.named_parameters()
                               if "layers" in n and "norm" not in n)
            fp_bytes = 2 * (128 * 256 + 128 * 128 + 3 * 128 * 256) * 4  # the same linears in fp32
            assert linear_bytes < fp_bytes / 4
            report = memory_report(runner.weight_bytes, runner.kv, runner.device, "awq")
            assert f"weights   {runner.weight_bytes / (1 << 30):.3f} GiB  awq" in report
        finally:
            pipe.close()


def test_hf_format_on_awq_dir_is_a_clear_error(awq_dir: Path) -> None:
    from interndeploy import pipeline

    with pytest.raises(ConfigError, match="holds awq quantized weights.*--model-format awq"):
        pipeline(str(awq_dir), backend_config=EngineConfig(model_format="hf", cpu_kv_budget_gib=0.05))


@pytest.mark.parametrize("arch", ["internlm2-bias", "llama"])
@pytest.mark.parametrize("search", [False, True], ids=["ratio", "search"])
def test_smoothing_keeps_the_float_model(tmp_path: Path, calib_file: Path, arch: str, search: bool) -> None:
    """Smoothing alone (no rounding) must leave the model's function unchanged: checks every producer /
    consumer pair of the layouts, the grouped wqkv v rows, GQA's repeated o_proj scales and the biases."""
    if arch == "llama":
        src = build_llama_dir(tmp_path / "fp", hidden_size=128, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    else:
        src = build_internlm2_dir(tmp_path / "fp", hidden_size=128, intermediate_size=128, num_attention_heads=8,
                                  num_key_value_heads=2, bias=True)
    info = load_model_info(src)
    layout = awq_layout(info.config)
    samples = torch.randint(3, info.config["vocab_size"], (2, 16))
    calib = LayerCalibrator(_load_float_model(info, torch.float32), samples, torch.device("cpu"),
                            sample_tokens=32 if search else 0)
    reader = CheckpointReader(src)
    smoothed = tmp_path / "smoothed"
    smoothed.mkdir()
    writer = ShardWriter(smoothed)
    done = set()
    for i in range(calib.num_layers):
        stats = calib.run_layer(i)
        prefix = layout.prefix(i)
        names = [n for n in reader.names if n.startswith(prefix)]
        tensors = {n[len(prefix):]: reader.get(n).float() for n in names}
        smooth_layer(layout, tensors, stats, bits=4, group_size=32, sym=False, search=search)
        for name, t in tensors.items():
            writer.add(prefix + name, t)
        done.update(names)
    for name in reader.names:
        if name not in done:
            writer.add(name, reader.get(name))
    writer.close()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (smoothed / f).write_bytes((src / f).read_bytes())
    prompts = random_prompts(info.config["vocab_size"], [11, 5])
    a = run_paged(load_our_model(src), prompts, decode_steps=0)
    b = run_paged(load_our_model(smoothed), prompts, decode_steps=0)
    for x, y in zip(a.prefill_logits, b.prefill_logits, strict=True):
        torch.testing.assert_close(y, x, atol=2e-4 * float(x.abs().max()), rtol=0)


def test_llama_quantizes_and_loads(tmp_path: Path, calib_file: Path) -> None:
    src = build_llama_dir(tmp_path / "fp", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                          num_key_value_heads=2)
    out = auto_awq(str(src), work_dir=str(tmp_path / "q"), calib_dataset=str(calib_file), calib_samples=4,
                   calib_seqlen=32, w_group_size=64, w_sym=True, device="cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["zero_point"] is False
    with safe_open(out / "model.safetensors", framework="pt") as f:
        assert "model.layers.0.self_attn.q_proj.qweight" in f.keys()
    prompts = random_prompts(config["vocab_size"], [16])
    a = run_paged(load_our_model(src), prompts, decode_steps=0).prefill_logits[0]
    b = run_paged(load_our_model(out), prompts, decode_steps=0).prefill_logits[0]
    assert float((a - b).norm() / a.norm()) < 0.35


def test_api_errors(fp_dir: Path, awq_dir: Path, calib_file: Path, tmp_path: Path) -> None:
    kw = {"work_dir": str(tmp_path / "x"), "calib_dataset": str(calib_file), "device": "cpu"}
    with pytest.raises(ValueError, match="already quantized"):
        auto_awq(str(awq_dir), **kw)
    with pytest.raises(ValueError, match="--w-bits 8"):
        auto_awq(str(fp_dir), w_bits=8, **kw)
    with pytest.raises(ValueError, match="--w-group-size 48 does not divide hidden_size = 128"):
        auto_awq(str(fp_dir), w_group_size=48, **kw)
    with pytest.raises(ValueError, match="not a local file and not one of ptb, wikitext2, c4, pileval"):
        auto_awq(str(fp_dir), **{**kw, "calib_dataset": "nosuchset"})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interndeploy.cli.main", "lite", "auto_awq", *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def test_cli_search_scale_as_a_value(fp_dir: Path, calib_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-w4a16"
    r = _cli(str(fp_dir), "--calib-dataset", str(calib_file), "--calib-samples", "4", "--calib-seqlen", "32",
             "--w-bits", "4", "--w-group-size", "64", "--batch-size", "2", "--search-scale", "False",
             "--device", "cpu", "--work-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == 64
    assert "ratio 0.5 scales" in r.stdout


def test_search_scale_flag_forms() -> None:
    from interndeploy.cli.main import build_parser

    parse = build_parser().parse_args
    base = ["lite", "auto_awq", "m"]
    assert parse(base).search_scale is False
    assert parse([*base, "--search-scale"]).search_scale is True
    assert parse([*base, "--search-scale", "False", "--w-sym"]).search_scale is False
    assert parse([*base, "--search-scale=True"]).search_scale is True
    assert parse(base).calib_dataset == "ptb" and parse(base).w_group_size == 128 and parse(base).calib_seqlen == 2048


def test_named_dataset_missing_from_cache_is_one_line(fp_dir: Path, tmp_path: Path) -> None:
    r = _cli(str(fp_dir), "--calib-dataset", "ptb", "--device", "cpu", "--work-dir", str(tmp_path / "o"),
             env={"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("interndeploy: error: calibration dataset 'ptb'")
    assert "datasets" in lines[0] and "--calib-dataset FILE.txt" in lines[0]
    assert not (tmp_path / "o").exists()
