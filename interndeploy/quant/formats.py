"""Which weight format a model directory holds, and the linear quant method that reads it.

    --model-format   config.json quantization_config     format
    (none) / hf      (none)                               hf
    (none)           quant_method: awq                    awq      (detected)
    awq              quant_method: awq                    awq
    hf               quant_method: awq                    error: the weights are int4, say awq or nothing
    awq              (none)                               error: quantize with `interndeploy lite auto_awq`
    awq, dummy load  (none)                               awq with default settings (benchmarks at real shapes)

A format registers a builder: quantization_config -> factory(layer) -> LinearMethod | None. The model
is built inside `linear_methods(...)`, so its linear layers take the format's method and the model file
never names one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from interndeploy.config import ConfigError
from interndeploy.layers.linear import LinearBase, LinearMethod, default_linear_method

LinearFactory = Callable[[LinearBase], LinearMethod | None]
FormatBuilder = Callable[[dict[str, Any]], LinearFactory]

_UNQUANTIZED = ("hf", "llama")  # LMDeploy's names for plain checkpoints


def _awq_builder(qc: dict[str, Any]) -> LinearFactory:
    from interndeploy.quant.awq_linear import AWQConfig, AWQLinearMethod

    method = AWQLinearMethod(AWQConfig.from_dict(qc))
    return lambda layer: method


_FORMATS: dict[str, FormatBuilder] = {"awq": _awq_builder}


def register_format(name: str, builder: FormatBuilder) -> None:
    """Make `--model-format NAME` (and quant_method NAME in config.json) loadable."""
    _FORMATS[name] = builder


def supported_formats() -> list[str]:
    return [*_UNQUANTIZED, *sorted(_FORMATS)]


def resolve_weight_format(
    config: dict[str, Any], model_format: str | None, path: Path | str, dummy: bool = False
) -> str:
    """The format to load: the user's --model-format checked against what config.json declares."""
    declared = (config.get("quantization_config") or {}).get("quant_method")
    declared = str(declared).lower() if declared else None
    asked = model_format.lower() if model_format else None
    if asked in _UNQUANTIZED:
        if declared:
            raise ConfigError(
                f"model directory {path} holds {declared} quantized weights (config.json quantization_config), "
                f"but --model-format {model_format} asks for unquantized ones; use --model-format {declared} "
                "or leave --model-format out"
            )
        return "hf"
    if asked is None:
        fmt = declared or "hf"
    else:
        if declared is None and not dummy:
            hint = " (make one with `interndeploy lite auto_awq`)" if asked == "awq" else ""
            raise ConfigError(
                f"--model-format {model_format}: model directory {path} has no quantization_config in its "
                f"config.json, so it holds no {model_format} weights{hint}; leave --model-format out for "
                "an unquantized model"
            )
        if declared is not None and declared != asked:
            raise ConfigError(
                f"--model-format {model_format}, but model directory {path} holds {declared} weights; "
                f"use --model-format {declared}"
            )
        fmt = asked
    if fmt != "hf" and fmt not in _FORMATS:
        raise ConfigError(
            f"weight format {fmt} (model directory {path}) is not supported; "
            f"supported: {', '.join(supported_formats())}"
        )
    return fmt


@contextmanager
def linear_methods(config: dict[str, Any], fmt: str) -> Iterator[None]:
    """Build the model inside this block so its linear layers take format `fmt`'s quant method."""
    if fmt == "hf":
        yield
        return
    factory = _FORMATS[fmt](config.get("quantization_config") or {})
    with default_linear_method(factory):
        yield
