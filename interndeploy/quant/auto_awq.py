"""`auto_awq`: quantize a model directory's decoder linears to AWQ int4 and write an AutoAWQ-format directory.

    calibration windows --our float model, one layer at a time--> each linear's input statistics
    for each layer:  checkpoint tensors (its own names and layout, e.g. InternLM2's grouped wqkv)
                     -> smooth every group (awq_layouts) -> clip (with --search-scale) -> int4 pack
    work_dir/  model-0000i-of-0000N.safetensors (+ index)   qweight / qzeros / scales per linear,
               config.json + quantization_config            everything else in --dtype (fp16 by default)
               tokenizer, chat template, generation config, remote code: copied

The output keeps the input's tensor names, so an InternLM2 checkpoint becomes an InternLM2 AWQ directory
(`attention.wqkv.qweight`, ...) as LMDeploy writes it, and AutoAWQ / vLLM / LMDeploy can read it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from interndeploy.model_dir import ModelInfo, load_model_info
from interndeploy.quant.awq import pack_awq, search_clip, search_scales, smooth_scales, weight_channel_stat
from interndeploy.quant.awq_layouts import AWQLayout, SmoothGroup, awq_layout
from interndeploy.quant.awq_linear import AWQConfig
from interndeploy.quant.calib_data import calib_samples as load_calib_samples
from interndeploy.quant.calibrate import InputStats, LayerCalibrator
from interndeploy.quant.checkpoint_io import CheckpointReader, ShardWriter

logger = logging.getLogger("interndeploy")

SEARCH_TOKENS = 4096  # calibration tokens kept per linear input for the scale and clip searches
_T = TypeVar("_T")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _progress(items: Iterable[_T], total: int, desc: str) -> Iterator[_T]:
    try:
        from tqdm import tqdm
    except ImportError:
        for i, item in enumerate(items):
            print(f"{desc}: {i + 1}/{total}", flush=True)
            yield item
        return
    yield from tqdm(items, total=total, desc=desc)


def _compute_dtype(dtype: str, config: dict[str, Any], device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32  # CPU: exact and fast enough for the small models one quantizes there
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    declared = _DTYPES.get(str(config.get("torch_dtype") or config.get("dtype")), torch.bfloat16)
    return declared if declared != torch.bfloat16 or torch.cuda.is_bf16_supported() else torch.float16


def _check_shapes(config: dict[str, Any], group: int) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    for name, size in (("hidden_size", config["hidden_size"]), ("intermediate_size", config["intermediate_size"]),
                       ("num_attention_heads x head_dim", heads * head_dim)):
        if size % group:
            raise ValueError(f"--w-group-size {group} does not divide {name} = {size}; pick a group size that does")
    if head_dim % 8:
        raise ValueError(f"head_dim {head_dim} is not a multiple of 8, which AWQ's int4 packing needs")


def _smooth(group: SmoothGroup, tensors: dict[str, torch.Tensor], stats: InputStats, search: bool, bits: int,
            group_size: int, sym: bool) -> torch.Tensor:
    """Scale the group's linears' input channels and divide their producer; the scales as seen by the fcs."""
    weights = [tensors[f"{fc}.weight"] for fc in group.fcs]
    w_cat = torch.cat(weights)
    w_stat = weight_channel_stat(w_cat, group_size)
    x_stat = (stats.absmean if search else stats.absmax).to(w_cat.device)
    r, d = group.gqa_repeat, group.head_dim
    if r > 1:  # scales live on the v channels: average each over the q heads it feeds
        x_stat, w_stat = (s.view(-1, r, d).mean(1).flatten() for s in (x_stat, w_stat))

    def expand(t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, 1, d).expand(-1, r, d).flatten() if r > 1 else t

    if search:
        x = stats.tokens().to(w_cat.device)
        t, ratio = search_scales(x, w_cat, x_stat, w_stat, bits, group_size, sym, expand)
        logger.debug("%s: ratio %s", group.fcs, ratio)
    else:
        t = smooth_scales(x_stat, w_stat, 0.5)
    te = expand(t)
    for w in weights:
        w.mul_(te)
    rows = group.prev_rows
    for suffix in ("weight", "bias"):
        p = tensors.get(f"{group.prev}.{suffix}")
        if p is None:
            continue
        if p.dim() == 1 and rows is None:
            p.div_(t)  # a norm's weight / a producer's bias over all its channels
        else:
            idx = rows.to(p.device) if rows is not None else torch.arange(p.shape[0], device=p.device)
            p[idx] = p[idx] / (t[:, None] if p.dim() == 2 else t)
    return te


def smooth_layer(
    layout: AWQLayout,
    tensors: dict[str, torch.Tensor],
    stats: dict[str, InputStats],
    *,
    bits: int,
    group_size: int,
    sym: bool,
    search: bool,
) -> dict[str, torch.Tensor]:
    """Smooth one decoder layer's checkpoint tensors (names relative to the layer, fp32) in place; the float
    model they describe computes the same function. Returns the scale each hooked input is divided by."""
    for name in layout.inputs:
        if f"{name}.weight" not in tensors:
            raise ValueError(f"the checkpoint has no {name}.weight in this layer; is it the architecture it says?")
    return {
        group.inputs: _smooth(group, tensors, stats[group.inputs], search, bits, group_size, sym)
        for group in layout.groups
    }


def quantize_layer(
    layout: AWQLayout,
    tensors: dict[str, torch.Tensor],
    stats: dict[str, InputStats],
    *,
    bits: int,
    group_size: int,
    sym: bool,
    search: bool,
    save_dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """One decoder layer's checkpoint tensors (names relative to the layer, fp32) -> its AWQ tensors on the CPU:
    qweight / qzeros / scales (fp16) per linear, everything else (norms, biases) in `save_dtype`."""
    x_scale = smooth_layer(layout, tensors, stats, bits=bits, group_size=group_size, sym=sym, search=search)
    out: dict[str, torch.Tensor] = {}
    for fc, inputs in layout.inputs.items():
        w = tensors.pop(f"{fc}.weight")
        if not torch.isfinite(w).all():
            raise ValueError(f"{fc}: non-finite weights after smoothing")
        if search and fc not in layout.no_clip:
            x = stats[inputs].tokens().to(w.device) / x_scale.get(inputs, torch.ones(1, device=w.device))
            w = search_clip(x, w, bits, group_size, sym)
        for suffix, t in pack_awq(w, bits, group_size, sym).items():
            out[f"{fc}.{suffix}"] = t.cpu()
    out.update({name: t.to("cpu", save_dtype) if t.is_floating_point() else t.cpu() for name, t in tensors.items()})
    return out


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, templates, generation config, remote code: every top-level file but weights and config.json."""
    for f in src.iterdir():
        if not f.is_file() or f.name == "config.json" or f.name.endswith(".index.json"):
            continue
        if f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf"):
            continue
        shutil.copy2(f, dst / f.name)


def auto_awq(
    model: str,
    work_dir: str = "./work_dir",
    calib_dataset: str = "ptb",
    calib_samples: int = 128,
    batch_size: int = 1,
    calib_seqlen: int = 2048,
    w_bits: int = 4,
    w_sym: bool = False,
    w_group_size: int = 128,
    search_scale: bool = False,
    device: str | None = None,
    revision: str | None = None,
    dtype: str = "auto",
    download_dir: str | None = None,
) -> Path:
    """LMDeploy's `auto_awq` (same arguments); returns the output directory."""
    del download_dir  # accepted for LMDeploy compatibility: models are local (or already in the HF cache)
    info: ModelInfo = load_model_info(model, revision)
    if info.quant_method:
        raise ValueError(f"model directory {info.path} is already quantized ({info.quant_method})")
    if getattr(info, "weight_prefixes", ()):
        raise ValueError(f"auto_awq quantizes language-model checkpoints; {info.path} is multimodal, not supported yet")
    if w_bits != 4:
        raise ValueError(f"--w-bits {w_bits}: AWQ's GEMM format holds 4-bit weights only; use --w-bits 4")
    if dtype not in ("auto", *_DTYPES):
        raise ValueError(f"--dtype {dtype}: choose auto, float16 or bfloat16")
    layout = awq_layout(info.config)
    group = w_group_size if w_group_size > 0 else info.config["hidden_size"]
    _check_shapes(info.config, group)
    out_dir = Path(work_dir).expanduser().resolve()
    if out_dir == info.path:
        raise ValueError(f"--work-dir {work_dir} is the model directory itself; pick another")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    compute = _compute_dtype(dtype, info.config, dev)
    save_dtype = _DTYPES.get(dtype, torch.float16)

    from interndeploy.tokenizer import Tokenizer

    samples = calib_samples_for(info, calib_dataset, calib_samples, calib_seqlen, Tokenizer.from_dir(info.path))
    float_model = _load_float_model(info, compute)
    calib = LayerCalibrator(float_model, samples, dev, batch_size, SEARCH_TOKENS if search_scale else 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = CheckpointReader(info.path)
    writer = ShardWriter(out_dir)
    done: set[str] = set()
    for i in _progress(range(calib.num_layers), calib.num_layers, "auto_awq layers"):
        stats = calib.run_layer(i)
        prefix = layout.prefix(i)
        names = [n for n in reader.names if n.startswith(prefix)]
        tensors = {n[len(prefix):]: reader.get(n).to(dev, torch.float32) for n in names}
        quantized = quantize_layer(layout, tensors, stats, bits=w_bits, group_size=w_group_size, sym=w_sym,
                                   search=search_scale, save_dtype=save_dtype)
        for name, t in quantized.items():
            writer.add(prefix + name, t)
        done.update(names)
        del stats, tensors, quantized
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for name in reader.names:  # embeddings, final norm, lm_head
        if name not in done and "rotary_emb.inv_freq" not in name:
            t = reader.get(name)
            writer.add(name, t.to(save_dtype) if t.is_floating_point() else t)
    writer.close()

    config = json.loads((info.path / "config.json").read_text(encoding="utf-8"))  # as written, plus:
    config["quantization_config"] = AWQConfig(w_bits, w_group_size, not w_sym).to_dict()
    for key in ("torch_dtype", *(("dtype",) if "dtype" in config else ())):
        config[key] = str(save_dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _copy_side_files(info.path, out_dir)
    print(f"auto_awq: wrote {out_dir} (int4, group size {w_group_size}, "
          f"{'symmetric' if w_sym else 'zero point'}, {'searched' if search_scale else 'ratio 0.5'} scales)",
          flush=True)
    return out_dir


def calib_samples_for(info: ModelInfo, dataset: str, n: int, seqlen: int, tokenizer: Any) -> torch.Tensor:
    samples = load_calib_samples(dataset, tokenizer, n, seqlen)
    vocab = int(info.config.get("vocab_size") or 0)
    if vocab and int(samples.max()) >= vocab:
        raise ValueError(f"the tokenizer of {info.path} produces ids >= vocab_size {vocab}")
    return samples


def _load_float_model(info: ModelInfo, dtype: torch.dtype) -> torch.nn.Module:
    """Our unquantized model on the CPU (moved to the device a layer at a time by the calibrator)."""
    from interndeploy.models.loader import load_weights
    from interndeploy.models.registry import get_model_class

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cpu"):
            model = get_model_class(info.config.get("architectures") or [])(info.hf_config)
    finally:
        torch.set_default_dtype(prev)
    load_weights(model, info.path, dtype)
    return model.eval()
