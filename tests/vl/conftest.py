"""Tiny vision-language checkpoints (built once per session) and helpers to make images and videos."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def vl_dirs(tmp_path_factory: pytest.TempPathFactory, internlm2_dir: Path) -> dict[str, Path]:
    """interns1: Intern-S1-style (HF layout, RMSNorm + qk norm, Qwen3 LM); internvl: InternVLChatModel (remote-code
    layout, LayerNorm, InternLM2 LM). "<kind>-lm" is the plain language model each wraps."""
    from interndeploy.testing.tiny_archs import build_qwen3_dir, wrap_as_multimodal

    root = tmp_path_factory.mktemp("vl")
    qwen3 = build_qwen3_dir(root / "qwen3")
    return {
        "interns1": wrap_as_multimodal(qwen3, root / "s1", "interns1", qk_norm=True, norm_type="rms_norm", bias=False),
        "interns1-lm": qwen3,
        "internvl": wrap_as_multimodal(internlm2_dir, root / "vl", "internvl"),
        "internvl-lm": internlm2_dir,
    }


def random_image(height: int, width: int, seed: int = 0):
    from PIL import Image

    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def mp4_bytes(num_frames: int = 8, size: int = 64, fps: int = 4) -> bytes:
    """A short MPEG-4 video made with PyAV: each frame a different flat colour with noise."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        rng = np.random.RandomState(0)
        for i in range(num_frames):
            arr = np.full((size, size, 3), (i * 30) % 256, dtype=np.uint8) + rng.randint(0, 20, (size, size, 3),
                                                                                         dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
