"""InternVL's image preprocessing: dynamic tiling to the closest aspect ratio, plus a thumbnail; normalization.

    image W x H  --grid (cols, rows) with cols * rows in [min_tiles, max_tiles] whose cols/rows is closest
                   to W/H (ties: the larger grid while W*H > half its area)-->
    resize to (cols S, rows S) bicubic, cut into cols*rows tiles of S x S, row-major,
    + the whole image resized to S x S (the thumbnail) when there is more than one tile
    -> (pixel / 255 - mean) / std, [tiles, 3, S, S] float32

A video frame is one S x S tile (no grid). Each tile becomes `tokens_per_tile` (256 at 448 px) language tokens.
Settings come from the checkpoint: preprocessor_config.json (HF layout: max_patches, min_patches, size,
image_mean, image_std) or config.json (InternVLChatModel: max_dynamic_patch, min_dynamic_patch, use_thumbnail,
dynamic_image_size). The InternVL processors tile whatever preprocessor_config.json says (crop_to_patches is
forced on by the processor), and so do we.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=32)
def _grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """(cols, rows) with min_tiles <= cols * rows <= max_tiles, by tile count (stable: cols-major order)."""
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]  # fmt: skip
    return sorted(grids, key=lambda g: g[0] * g[1])


def best_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(cols, rows) of the tiling of a width x height image."""
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in _grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


@dataclass(frozen=True)
class ImageProcessor:
    image_size: int  # tile side S in pixels
    tokens_per_tile: int
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    dynamic: bool = True  # tile at all (False: every image is one S x S tile)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_checkpoint(cls, model_dir: Path, root: dict[str, Any], image_size: int, tokens_per_tile: int
                        ) -> ImageProcessor:  # fmt: skip
        pre_path = Path(model_dir) / "preprocessor_config.json"
        pre = json.loads(pre_path.read_text(encoding="utf-8")) if pre_path.is_file() else {}
        if "llm_config" in root:  # InternVLChatModel
            return cls(image_size, tokens_per_tile, int(root.get("min_dynamic_patch", 1)),
                       int(root.get("max_dynamic_patch", 12)), bool(root.get("use_thumbnail", True)),
                       bool(root.get("dynamic_image_size", True)))  # fmt: skip
        size = pre.get("size") or {}
        side = int(size.get("height", image_size)) if isinstance(size, dict) else int(size)
        if side != image_size:
            raise ValueError(f"{pre_path} resizes to {side} px but the vision tower takes {image_size} px tiles")
        return cls(image_size, tokens_per_tile, int(pre.get("min_patches", 1)), int(pre.get("max_patches", 12)),
                   True, True, tuple(pre.get("image_mean", IMAGENET_MEAN)), tuple(pre.get("image_std", IMAGENET_STD)))

    def tiles(self, image: Any) -> list[Any]:
        """The PIL tiles of an RGB PIL image (grid tiles, then the thumbnail)."""
        from PIL import Image

        s = self.image_size
        if not self.dynamic or self.max_tiles <= 1:
            return [image.resize((s, s), Image.BICUBIC)]
        cols, rows = best_grid(image.width, image.height, s, self.min_tiles, self.max_tiles)
        resized = image.resize((cols * s, rows * s), Image.BICUBIC)
        out = [resized.crop(((i % cols) * s, (i // cols) * s, (i % cols + 1) * s, (i // cols + 1) * s))
               for i in range(cols * rows)]  # fmt: skip
        if self.use_thumbnail and len(out) != 1:
            out.append(image.resize((s, s), Image.BICUBIC))
        return out

    def normalize(self, tiles: list[Any]) -> torch.Tensor:
        """PIL tiles -> [n, 3, S, S] float32."""
        arr = np.stack([np.asarray(t, dtype=np.float32) for t in tiles]) / np.float32(255.0)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))

    def image(self, image: Any) -> torch.Tensor:
        return self.normalize(self.tiles(image))

    def video(self, frames: list[Any]) -> torch.Tensor:
        from PIL import Image

        s = self.image_size
        return self.normalize([f.resize((s, s), Image.BICUBIC) for f in frames])


def content_hash(pixels: torch.Tensor) -> int:
    """A 64-bit hash of preprocessed pixels (and their shape)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(tuple(pixels.shape)).encode())
    h.update(pixels.contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little")
