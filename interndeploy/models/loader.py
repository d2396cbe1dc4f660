"""Load a Hugging Face checkpoint into a model, one tensor at a time.

For each checkpoint tensor:
    name --weight_prefixes (multimodal checkpoints)--> the language model's name, or skipped
         --model.remap_checkpoint_name (optional)---> our name, or directly (our name, shard id)
         --model.packed_modules_mapping-------------> (packed parameter name, shard id) or (name, None)
    param.weight_loader(param, tensor, shard_id)     (the parameter knows its layout and TP slice)

Float tensors are cast to their parameter's dtype (the model's; FP8 weights and their fp32 scales
keep theirs). The loader knows nothing about any architecture. Every parameter must have been filled
completely: all shards of a packed one (those named by packed_modules_mapping, or the parameter's own
`expected_shards`, e.g. one per expert). Afterwards each layer's quant method may repack its weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from interndeploy.layers.weight_loader import default_weight_loader

logger = logging.getLogger(__name__)

_SKIPPED = ("rotary_emb.inv_freq",)


class WeightLoadError(ValueError):
    """The checkpoint does not fit the model: missing tensors, wrong shapes, or no weight files."""


def _files_from_index(model_dir: Path, index_name: str) -> list[Path] | None:
    index = model_dir / index_name
    if not index.is_file():
        return None
    weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    return [model_dir / f for f in sorted(set(weight_map.values()))]


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors shards (preferred) or pytorch_model*.bin files of a model directory."""
    model_dir = Path(model_dir)
    for index_name, pattern in (
        ("model.safetensors.index.json", "*.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model*.bin"),
    ):
        files = _files_from_index(model_dir, index_name) or sorted(model_dir.glob(pattern))
        if files:
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise WeightLoadError(f"{model_dir / index_name} lists files that do not exist: {', '.join(missing)}")
            return files
    raise WeightLoadError(f"model directory {model_dir} has no *.safetensors or pytorch_model*.bin weights")


def iter_checkpoint(
    model_dir: Path, select: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) over the whole checkpoint, or the tensors `select` accepts (others in safetensors files are
    not read); safetensors are read lazily, .bin files memory-mapped."""
    for path in checkpoint_files(model_dir):
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    if select is None or select(name):
                        yield name, f.get_tensor(name)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            yield from ((n, t) for n, t in state.items() if select is None or select(n))
            del state


def _resolve(model: nn.Module, name: str) -> tuple[str, object] | None:
    """Checkpoint name -> (our parameter name, shard id), or None to skip it."""
    if any(s in name for s in _SKIPPED):
        return None
    remap = getattr(model, "remap_checkpoint_name", None)
    if remap is not None:
        name = remap(name)
        if name is None or isinstance(name, tuple):  # skipped, or already (parameter name, shard id)
            return name
    parts = name.split(".")
    mapping = getattr(model, "packed_modules_mapping", {})
    for i, part in enumerate(parts):
        if part in mapping:
            packed, shard_id = mapping[part]
            return ".".join([*parts[:i], packed, *parts[i + 1 :]]), shard_id
    return name, None


def _expected_shards(model: nn.Module, name: str, param: nn.Parameter) -> set[object]:
    """Shard ids a packed parameter needs from a split checkpoint (empty for an unpacked one)."""
    if getattr(param, "expected_shards", None) is not None:
        return param.expected_shards
    mapping = getattr(model, "packed_modules_mapping", {})
    parts = set(name.split("."))
    return {shard for packed, shard in mapping.values() if packed in parts}


def _strip_prefix(name: str, weight_prefixes: tuple[tuple[str, str], ...]) -> str | None:
    """The language model's name for a multimodal checkpoint's tensor, or None (vision tower, projector)."""
    for prefix, replacement in weight_prefixes:
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return None


def _cast(tensor: torch.Tensor, param: nn.Parameter, ckpt_name: str, model_dir: Path) -> torch.Tensor:
    if not (tensor.is_floating_point() and param.is_floating_point()):
        return tensor
    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    if (tensor.dtype in fp8) != (param.dtype in fp8):
        raise WeightLoadError(
            f"{ckpt_name} in {model_dir} is {tensor.dtype} but the model expects {param.dtype}: "
            + ("config.json has no FP8 quantization_config for these weights"
               if tensor.dtype in fp8 else "the checkpoint kept this layer unquantized, which is not supported yet")
        )  # fmt: skip
    return tensor.to(param.dtype)


def load_weights(
    model: nn.Module,
    model_dir: Path,
    dtype: torch.dtype | None = None,
    weight_prefixes: tuple[tuple[str, str], ...] = (),
    select: Callable[[str], bool] | None = None,
) -> None:
    """Fill every parameter of `model` from the checkpoint in `model_dir`, casting float tensors to the
    parameter's dtype (`dtype`, the model's, for all but quantized weights). With `weight_prefixes`
    (ModelInfo's, for the language model of a multimodal checkpoint) only tensors under one of the
    prefixes are read, renamed to the replacement; with `select`, only the tensors it accepts."""
    if weight_prefixes and select is None:
        prefixes = tuple(p for p, _ in weight_prefixes)
        select = lambda name: name.startswith(prefixes)  # noqa: E731
    model_dir = Path(model_dir)
    params = dict(model.named_parameters(remove_duplicate=False))  # tied weights answer to both names
    shards_seen: dict[int, set[object]] = {}
    unexpected: list[str] = []
    with torch.no_grad():
        for ckpt_name, tensor in iter_checkpoint(model_dir, select):
            lm_name = _strip_prefix(ckpt_name, weight_prefixes) if weight_prefixes else ckpt_name
            resolved = _resolve(model, lm_name) if lm_name is not None else None
            if resolved is None:
                continue
            name, shard_id = resolved
            param = params.get(name)
            if param is None:
                unexpected.append(ckpt_name)
                continue
            tensor = _cast(tensor, param, ckpt_name, model_dir)
            loader = getattr(param, "weight_loader", default_weight_loader)
            try:
                loader(param, tensor) if shard_id is None else loader(param, tensor, shard_id)
            except (ValueError, RuntimeError) as e:
                raise WeightLoadError(
                    f"cannot load {ckpt_name} {tuple(tensor.shape)} from {model_dir} into {name} "
                    f"{tuple(param.shape)}: {e}; does config.json match the weights?"
                ) from None
            shards_seen.setdefault(id(param), set()).add(shard_id)

    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
        logger.warning("ignored %d checkpoint tensors the model has no parameter for: %s", len(unexpected), shown)
    missing = []
    for name, param in model.named_parameters():
        seen = shards_seen.get(id(param), set())
        if None in seen:
            continue
        needed = _expected_shards(model, name, param)
        if not seen or not needed <= seen:
            missing.append(name if not seen else f"{name} (shards {sorted(map(str, needed - seen))})")
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise WeightLoadError(f"checkpoint in {model_dir} is missing {len(missing)} weights the model needs: {shown}")
    _process_after_loading(model)


def _process_after_loading(model: nn.Module) -> None:
    """Let each layer's quant method repack (or dequantize) the weights it now holds."""
    with torch.no_grad():
        for module in model.modules():
            quant_method = getattr(module, "quant_method", None)
            if quant_method is not None:
                quant_method.process_weights_after_loading(module)


@torch.no_grad()
def init_dummy_weights(model: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Random weights at the model's shapes, made on its device (benchmarks at real shapes, no files)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if not param.is_floating_point():  # packed integer weights (int4 x 8 per int32): any bits will do
            info = torch.iinfo(param.dtype)
            param.copy_(torch.randint(info.min, info.max, param.shape, generator=gen, device=param.device))
        elif param.element_size() == 1:  # FP8 weights ~N(0, 1); their block scales (below) bring them to std
            param.copy_(torch.randn(param.shape, generator=gen, device=param.device))
        elif name.endswith("weight_scale_inv"):
            param.fill_(std)
        elif param.dim() == 1:
            param.fill_(1.0 if "norm" in name else 0.0)
        else:
            param.normal_(0.0, std, generator=gen)
    _process_after_loading(model)  # as after a real load (FP8 off Hopper: dequantize)
