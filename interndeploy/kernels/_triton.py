"""Triton when it is installed, else a stand-in, so every kernel module imports on a CPU-only machine.

Kernel modules take `triton` and `tl` from here. Without Triton, `@triton.jit` returns a stub that
raises when launched; layers never launch one then (`use_triton` is False), so CPU CI never needs Triton.

`use_triton(x)` is the one dispatch rule of the layers: Triton for CUDA tensors, the torch reference
otherwise, or always the reference inside `reference_kernels()` / with INTERNDEPLOY_KERNELS=reference.

Programmatic dependent launch (PDL, Hopper and later; INTERNDEPLOY_PDL=0 turns it off): the decode-path kernels
are launched with `pdl_launch(device)`, so a kernel's programs may start while the kernel before it in the
stream still runs its last wave (in CUDA graphs too). Each such kernel calls `pdl_wait(USE_PDL)` before it
touches anything an earlier kernel writes or reads, in every program; only reads of memory no kernel writes
(weights) may come before it. The wait also lets the next kernel launch, so at most one kernel runs ahead.
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


if HAS_TRITON:

    @triton.jit
    def pdl_wait(USE_PDL: tl.constexpr):
        """Wait until the kernel before this one has finished and its writes are visible; then let the next
        kernel's programs launch. A no-op unless launched with `pdl_launch`."""
        if USE_PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

else:
    pdl_wait = _jit(lambda USE_PDL: None)


def _triton_has_pdl() -> bool:
    """Triton 3.3+: gdc_wait / gdc_launch_dependents, and launch_pdl at launch."""
    try:
        from triton.language.extra import cuda as tl_cuda
    except ImportError:
        return False
    return hasattr(tl_cuda, "gdc_wait") and hasattr(tl_cuda, "gdc_launch_dependents")


@functools.cache
def _pdl_supported(device: torch.device) -> bool:
    return (
        HAS_TRITON
        and device.type == "cuda"
        and _triton_has_pdl()
        and os.environ.get("INTERNDEPLOY_PDL", "1") != "0"
        and torch.cuda.get_device_capability(device) >= (9, 0)
    )


def pdl_launch(device: torch.device) -> dict[str, bool]:
    """Launch keyword arguments of a kernel that takes USE_PDL: dependent launch where the GPU has it."""
    if _pdl_supported(device):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


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
