"""Linear layers with tensor-parallel sharding in their weight loaders.

    ReplicatedLinear     full weight on every rank
    ColumnLinear         output dim split across ranks: y_r = x W_r^T           (no communication)
    RowLinear            input dim split across ranks:  y = sum_r x_r W_r^T     (all-reduce when tp > 1)
    MergedColumnLinear   [gate | up] packed along the output dim, shard ids 0, 1, ...
    QKVLinear            [q | k | v] packed along the output dim, shard ids "q", "k", "v"

Each rank holds the rank's slice of every packed part, in the same order: rank r's qkv weight is
[q_r | k_r | v_r]. The quant method decides what parameters a layer has and how it multiplies;
the unquantized method holds weight [out, in] (+ bias [out]). A layer built without an explicit method
asks the factory set by `default_linear_method` (the model builder sets it for a quantized checkpoint),
so model files never name a quantization format. A parameter packed along its output dim (int4: 8 per
int32) carries `packed_dim` and `pack_factor`, and packed-module offsets are divided by the factor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from interndeploy.distributed import tp_all_reduce
from interndeploy.kernels import gemv as gemv_kernel
from interndeploy.kernels._triton import use_triton
from interndeploy.layers.weight_loader import set_weight_attrs, tp_rank_and_size


class LinearMethod:
    """Strategy for a linear layer's parameters; a quantized format subclasses this."""

    def create_weights(
        self, layer: nn.Module, input_size: int, output_size: int, bias: bool, dtype: torch.dtype | None
    ) -> None:
        weight = nn.Parameter(torch.empty(output_size, input_size, dtype=dtype), requires_grad=False)
        layer.register_parameter("weight", set_weight_attrs(weight, output_dim=0, input_dim=1))
        if bias:
            b = nn.Parameter(torch.empty(output_size, dtype=dtype), requires_grad=False)
            layer.register_parameter("bias", set_weight_attrs(b, output_dim=0))
        else:
            layer.register_parameter("bias", None)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights for the kernel (no-op when unquantized)."""

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return dense_linear(x, layer.weight, bias)


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias): one row (a batch-1 decode step) through the Triton GEMV on a GPU, which streams
    the weight faster than cuBLAS's split-K choices for narrow layers; everything else through F.linear."""
    if use_triton(x) and gemv_kernel.supports(x, weight):
        y = gemv_kernel.gemv(x, weight)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


LinearMethodFactory = Callable[["LinearBase"], "LinearMethod | None"]
_method_factory: LinearMethodFactory | None = None


@contextmanager
def default_linear_method(factory: LinearMethodFactory | None) -> Iterator[None]:
    """Layers built inside the block without a quant method get `factory(layer)` (None = unquantized)."""
    global _method_factory
    prev, _method_factory = _method_factory, factory
    try:
        yield
    finally:
        _method_factory = prev


def linear_method_factory() -> LinearMethodFactory | None:
    """The factory of the enclosing `default_linear_method` block, if any (FusedMoE asks it for its method)."""
    return _method_factory


class LinearBase(nn.Module):
    """`input_size`/`output_size` are this rank's sizes; subclasses decide which one is sharded."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        quant_method: LinearMethod | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.input_size = input_size
        self.output_size = output_size
        if quant_method is None and _method_factory is not None:
            quant_method = _method_factory(self)
        self.quant_method = quant_method or LinearMethod()
        self.quant_method.create_weights(self, input_size, output_size, bias, dtype)
        for param in self.parameters(recurse=False):
            param.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"shape mismatch: parameter slice {tuple(dst.shape)}, checkpoint {tuple(src.shape)}")
    dst.copy_(src)


def _rank_slice(loaded: torch.Tensor, dim: int | None, rank: int, size: int, tp_size: int) -> torch.Tensor:
    """This rank's `size` rows of `loaded` along `dim` (the whole tensor when dim is None)."""
    if dim is None:
        return loaded
    if loaded.shape[dim] != size * tp_size:
        raise ValueError(
            f"checkpoint {tuple(loaded.shape)} has {loaded.shape[dim]} rows in dim {dim}, "
            f"expected {size} x {tp_size} ranks"
        )
    return loaded.narrow(dim, rank * size, size)


class ReplicatedLinear(LinearBase):
    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        _copy(param.data, loaded)


class ColumnLinear(LinearBase):
    """Output features split across ranks; `output_size` is the full (unsharded) size."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, **kw) -> None:
        _, tp_size = tp_rank_and_size()
        super().__init__(input_size, output_size // tp_size, bias, **kw)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        dim = getattr(param, "output_dim", None)
        size = param.shape[dim] if dim is not None else 0
        _copy(param.data, _rank_slice(loaded, dim, self.tp_rank, size, self.tp_size))


class RowLinear(LinearBase):
    """Input features split across ranks; `input_size` is the full size. The bias is added once, on rank 0."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, **kw) -> None:
        _, tp_size = tp_rank_and_size()
        super().__init__(input_size // tp_size, output_size, bias, **kw)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        dim = getattr(param, "input_dim", None)
        size = param.shape[dim] if dim is not None else 0
        _copy(param.data, _rank_slice(loaded, dim, self.tp_rank, size, self.tp_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.quant_method.apply(self, x, self.bias if self.tp_rank == 0 else None)
        return tp_all_reduce(y) if self.tp_size > 1 else y


class MergedColumnLinear(ColumnLinear):
    """Several column layers sharing one input, packed along the output dim; shard id = index in `output_sizes`."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, **kw) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias, **kw)

    def _shard(self, shard_id: object) -> tuple[int, int]:
        """(offset, size) of this rank's part `shard_id` inside its packed output dim."""
        sizes = [s // self.tp_size for s in self.output_sizes]
        return sum(sizes[:shard_id]), sizes[shard_id]

    def _source(self, shard_id: object) -> tuple[int, int]:
        """(which slice, of how many) of the checkpoint's part `shard_id` this rank holds."""
        return self.tp_rank, self.tp_size

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        dim = getattr(param, "output_dim", None)
        if shard_id is None or dim is None:
            # an already packed checkpoint tensor (or a parameter with no output dim, e.g. a scalar scale)
            if dim is not None and self.tp_size > 1 and len(self.output_sizes) > 1:
                raise ValueError(f"a checkpoint tensor with all {len(self.output_sizes)} parts packed cannot be "
                                 f"split across tp={self.tp_size} ranks; save the parts separately")
            return super().weight_loader(param, loaded)
        offset, size = self._shard(shard_id)
        if getattr(param, "packed_dim", None) == dim:  # e.g. int4 packed 8 per int32 along the output dim
            offset, size = offset // param.pack_factor, size // param.pack_factor
        index, parts = self._source(shard_id)
        _copy(param.data.narrow(dim, offset, size), _rank_slice(loaded, dim, index, size, parts))


class QKVLinear(MergedColumnLinear):
    """Output = [q (num_heads * head_dim) | k (num_kv_heads * head_dim) | v (num_kv_heads * head_dim)].

    With tp > 1 each rank holds num_heads / tp q heads and num_kv_heads / tp kv heads; when tp exceeds
    num_kv_heads (a multiple of it), each kv head is replicated on tp / num_kv_heads consecutive ranks,
    which are exactly the ranks holding its q heads.
    """

    def __init__(
        self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False, **kw
    ) -> None:
        _, tp_size = tp_rank_and_size()
        if num_heads % tp_size or (num_kv_heads % tp_size and tp_size % num_kv_heads):
            raise ValueError(f"tp={tp_size} must divide num_heads={num_heads} and divide or be a multiple of "
                             f"num_kv_heads={num_kv_heads}")
        self.head_dim = head_dim
        self.num_heads = num_heads // tp_size
        self.kv_replicas = max(1, tp_size // num_kv_heads)  # ranks holding each kv head
        self.num_kv_heads = num_kv_heads * self.kv_replicas // tp_size
        q, kv = num_heads * head_dim, num_kv_heads * self.kv_replicas * head_dim
        super().__init__(hidden_size, [q, kv, kv], bias, **kw)

    def _shard(self, shard_id: object) -> tuple[int, int]:
        index = {"q": 0, "k": 1, "v": 2}.get(shard_id) if isinstance(shard_id, str) else None
        if index is None:
            raise ValueError(f"QKVLinear shard id must be 'q', 'k' or 'v', got {shard_id!r}")
        return super()._shard(index)

    def _source(self, shard_id: object) -> tuple[int, int]:
        if shard_id == "q":
            return self.tp_rank, self.tp_size
        return self.tp_rank // self.kv_replicas, self.tp_size // self.kv_replicas
