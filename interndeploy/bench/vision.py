"""Latency of a vision-language request at a real shape with random weights: one image, one video.

    python -m interndeploy.bench.vision [--frames 32] [--image 640x480] [--new-tokens 128]

Builds an Intern-S1-mini-shaped checkpoint directory (InternViT-300M + MLP projector + the Qwen3-8B language model;
config and tokenizer only, load_format=dummy), then for each request reports
    vision_s   the vision tower alone on the request's tiles (13 for a 640x480 image, one per video frame)
    ttft_s     time to first token through the engine (decode, tile, encode, prefill, sample)
    decode     tokens per second after the first (batch 1, ignore_eos)
and the GPU's name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import EngineConfig, GenerationConfig
from .shapes import SHAPES

INTERNVIT_300M = {"model_type": "interns1_vision", "hidden_size": 1024, "num_attention_heads": 16,
                  "intermediate_size": 4096, "num_hidden_layers": 24, "image_size": [448, 448], "patch_size": [14, 14],
                  "attention_bias": True, "use_qk_norm": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
                  "hidden_act": "gelu", "use_mean_pooling": True}  # fmt: skip


def intern_s1_mini_dir(root: Path, tiny: bool = False) -> Path:
    """config.json (InternS1ForConditionalGeneration) + a small tokenizer with the image tokens; no weights.
    `tiny`: toy sizes at the same layout (a CPU smoke run)."""
    from ..testing.tiny_vlm import IMAGE_TOKENS
    from ..testing.tokenizers import train_bpe_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    text = {k: v for k, v in SHAPES["intern-s1-mini"].items() if k != "architectures"}
    vision = dict(INTERNVIT_300M)
    if tiny:
        text.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    intermediate_size=128, vocab_size=512)
        vision.update(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2)
    config = {"architectures": ["InternS1ForConditionalGeneration"], "model_type": "interns1", "text_config": text,
              "vision_config": vision, "downsample_ratio": 0.5, "projector_hidden_act": "gelu",
              "vision_feature_layer": -1, "vision_feature_select_strategy": "default", "torch_dtype": "bfloat16",
              "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
    (root / "config.json").write_text(json.dumps(config, indent=2))
    train_bpe_tokenizer(root, extra_special=IMAGE_TOKENS)
    return root


async def _one(engine, prompt, gen: GenerationConfig) -> dict[str, float]:
    start = time.perf_counter()
    ids, mm = await engine.encode_chat(prompt)
    first = last = None
    n = 0
    async for out in engine.generate(ids, gen, multimodal=mm):
        now = time.perf_counter()
        if out.token_ids and first is None:
            first = now
        n = out.num_output_tokens
        last = now
    decode = (n - 1) / (last - first) if first is not None and last > first else float("nan")
    return {"prompt_tokens": len(ids), "media_tokens": mm.num_embeds if mm else 0, "ttft_s": first - start,
            "decode_tok_s": decode, "new_tokens": n}  # fmt: skip


def _vision_seconds(runner, pixels: torch.Tensor, repeats: int = 3) -> float:
    from ..engine.multimodal import MediaItem

    item = MediaItem("image", pixels, [(0, pixels.shape[0] * 256)], 0)
    runner.encode([item])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        runner.encode([item])
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from ..engine.async_engine import AsyncEngine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--image", default="640x480", help="WxH of the image (640x480: 12 tiles + thumbnail)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--session-len", type=int, default=16384)
    p.add_argument("--tiny", action="store_true", help="toy sizes (a CPU smoke run)")
    args = p.parse_args(argv)
    model = intern_s1_mini_dir(Path(tempfile.mkdtemp(prefix="interndeploy-s1-mini-")), args.tiny)
    cfg = EngineConfig(load_format="dummy", session_len=args.session_len, max_prefill_token_num=16384, max_batch_size=8,
                       cache_max_entry_count=0.5)  # fmt: skip
    engine = AsyncEngine(str(model), cfg)
    rng = np.random.RandomState(0)
    w, h = (int(x) for x in args.image.split("x"))
    image = Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
    frames = [Image.fromarray(rng.randint(0, 256, (360, 640, 3), dtype=np.uint8)) for _ in range(args.frames)]
    requests = {
        "image": [{"role": "user", "content": [{"type": "image_data", "image_data": {"data": image}},
                                               {"type": "text", "text": "Describe the image."}]}],
        "video": [{"role": "user", "content": [{"type": "video", "video": frames},
                                               {"type": "text", "text": "What happens in the video?"}]}],
    }  # fmt: skip
    gen = GenerationConfig(max_new_tokens=args.new_tokens, ignore_eos=True, do_sample=False)
    loop = asyncio.new_event_loop()
    results = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    try:
        loop.run_until_complete(_one(engine, requests["image"], GenerationConfig(max_new_tokens=4)))  # warm-up
        runner = engine.engine.runner.vision
        processor = engine.vision.processor
        for name, prompt in requests.items():
            loop.run_until_complete(_one(engine, prompt, GenerationConfig(max_new_tokens=2)))  # warm this shape
            r = loop.run_until_complete(_one(engine, prompt, gen))
            pixels = processor.image(image) if name == "image" else processor.video(frames)
            r["tiles"] = int(pixels.shape[0])
            if torch.cuda.is_available():
                r["vision_s"] = _vision_seconds(runner, pixels)
            results[name] = r
    finally:
        engine.shutdown()
        loop.close()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
