"""The compute dtype `--dtype auto` picks: the checkpoint's, bf16 for fp32 ones, fp32 on the CPU, and bf16 for
AWQ checkpoints where torch's int4 kernel (bf16 only) serves their decode."""

from __future__ import annotations

import pytest
import torch

from interndeploy.quant import awq_tinygemm
from interndeploy.worker.model_runner import pick_dtype

CUDA = torch.device("cuda")  # only compared, never used: no GPU needed


@pytest.fixture
def gpu_like(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(awq_tinygemm, "kernel_available", lambda device: device.type == "cuda")


def test_cpu_is_fp32_unless_asked() -> None:
    assert pick_dtype("auto", {"torch_dtype": "float16"}, torch.device("cpu"), "awq") == torch.float32
    assert pick_dtype("bfloat16", {}, torch.device("cpu")) == torch.bfloat16


@pytest.mark.usefixtures("gpu_like")
@pytest.mark.parametrize(
    ("declared", "fmt", "want"),
    [
        ("float16", "hf", torch.float16),
        ("bfloat16", "hf", torch.bfloat16),
        ("float32", "hf", torch.bfloat16),
        ("float16", "awq", torch.bfloat16),
        ("float16", "fp8", torch.float16),
    ],
)
def test_auto_on_a_gpu(declared: str, fmt: str, want: torch.dtype) -> None:
    assert pick_dtype("auto", {"torch_dtype": declared}, CUDA, fmt) == want


@pytest.mark.usefixtures("gpu_like")
def test_awq_keeps_an_explicit_float16() -> None:
    assert pick_dtype("float16", {"torch_dtype": "float16"}, CUDA, "awq") == torch.float16


def test_awq_stays_fp16_without_the_int4_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(awq_tinygemm, "kernel_available", lambda device: False)
    assert pick_dtype("auto", {"torch_dtype": "float16"}, CUDA, "awq") == torch.float16
