"""How a parameter receives its checkpoint tensor.

Every parameter carries `param.weight_loader(param, loaded, shard_id=None)`; the model loader calls it
and knows nothing else about the layer. Parameters may also carry `output_dim` / `input_dim` (the dim
of the parameter that is split across tensor-parallel ranks for a column / row layer), so a quant
method with another layout (e.g. transposed, packed int4) only has to set those.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from interndeploy import distributed

WeightLoader = Callable[..., None]


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
    if shard_id is not None:
        raise ValueError(f"parameter of shape {tuple(param.shape)} is not packed, but got shard {shard_id!r}")
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)}, checkpoint {tuple(loaded.shape)}")
    param.data.copy_(loaded)


def set_weight_attrs(param: nn.Parameter, **attrs: object) -> nn.Parameter:
    for key, value in attrs.items():
        setattr(param, key, value)
    return param


def tp_rank_and_size() -> tuple[int, int]:
    """This rank's tensor-parallel (rank, world size): (0, 1) outside a distributed engine."""
    return distributed.tp_rank_and_size()
