"""Triton when it is installed, else a stand-in, so every kernel module imports on a CPU-only machine.

Kernel modules take `triton` and `tl` from here. Without Triton, `@triton.jit` returns a stub that
raises when launched; layers never launch one then (`use_triton` is False), so CPU CI never needs Triton.

`use_triton(x)` is the one dispatch rule of the layers: Triton for CUDA tensors, the torch reference
otherwise, or always the reference inside `reference_kernels()` / with INTERNDEPLOY_KERNELS=reference.
"""

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only install
    HAS_TRITON = False

    class _Unavailable:
        def __init__(self, fn: Any) -> None:
            self.__name__ = getattr(fn, "__name__", "kernel")

        def __getitem__(self, grid: Any) -> Any:
            def launch(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError(f"{self.__name__} needs Triton, which is not installed (pip install triton)")

            return launch

    def _jit(fn: Any = None, **_: Any) -> Any:
        return _Unavailable(fn) if fn is not None else _Unavailable

    triton = SimpleNamespace(jit=_jit)  # type: ignore[assignment]
    tl = SimpleNamespace(constexpr=Any)  # annotations of the kernel signatures evaluate at import


_FORCE_REFERENCE = os.environ.get("INTERNDEPLOY_KERNELS", "").lower() == "reference"


def use_triton(x: torch.Tensor) -> bool:
    """True when `x` lives on a CUDA device, Triton is installed and the reference is not forced."""
    return x.is_cuda and HAS_TRITON and not _FORCE_REFERENCE


@contextmanager
def reference_kernels() -> Iterator[None]:
    """Run the torch reference kernels on CUDA too, inside the block (tests, benchmarks)."""
    global _FORCE_REFERENCE
    prev, _FORCE_REFERENCE = _FORCE_REFERENCE, True
    try:
        yield
    finally:
        _FORCE_REFERENCE = prev


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (a host query; safe during graph capture); 1 elsewhere."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def check(cond: bool, message: str) -> None:
    """A launcher's shape / dtype check: a ValueError naming what was wrong."""
    if not cond:
        raise ValueError(message)
