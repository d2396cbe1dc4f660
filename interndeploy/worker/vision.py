"""The vision side of a step: encode the media that this step's prefill chunks reach, splice them into the input.

    step tokens (flattened):  [ seq A chunk: text <img> c c c | seq B: decode | seq C chunk: c c c </img> text ]
                                              ^^^^^ rows of A's item   ^^^^^ rows k..k+3 of C's item
    input embeds = embed(input_ids), those rows overwritten by the items' vision features (by position, so a
    chunk that starts or ends inside an image takes just its slice)

Items are encoded in one batch of tiles per step (`max_batch_tiles` per tower call), only when a chunk needs
them, and kept by content hash until the sequence that needed them has passed their last position (a later
chunk of the same image reuses them; the next sample or request with the same pixels reuses them while they
are kept). Decode-only steps never come here with work: they touch no placeholder.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from ..engine.scheduler import SchedulerOutput
from ..model_dir import ModelInfo
from ..models.internvit import VISION_PREFIXES, InternVisionTower, VisionSpec
from ..models.loader import init_dummy_weights, load_weights

MAX_BATCH_TILES = 32  # tiles per vision tower call
CACHE_BYTES = 1 << 30  # features kept for later chunks, at most


def build_vision_tower(info: ModelInfo, dtype: torch.dtype, device: torch.device, dummy: bool) -> InternVisionTower:
    """The vision tower + projector of a multimodal checkpoint, loaded (or random, for `load_format=dummy`)."""
    spec = VisionSpec.from_root_config(info.root_config or {}, int(info.config["hidden_size"]))
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            tower = InternVisionTower(spec)
    finally:
        torch.set_default_dtype(prev)
    for module in tower.modules():  # every packed qkv needs its three shards from an HF-layout checkpoint
        if hasattr(module, "qkv"):
            for param in module.qkv.parameters():
                param.expected_shards = {"q", "k", "v"}
    if dummy:
        init_dummy_weights(tower)
    else:
        load_weights(tower, info.path, dtype, select=lambda name: name.startswith(VISION_PREFIXES))
    return tower.eval()


class VisionRunner:
    def __init__(self, tower: InternVisionTower, max_batch_tiles: int = MAX_BATCH_TILES) -> None:
        self.tower = tower
        self.max_batch_tiles = max_batch_tiles
        param = next(tower.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache: OrderedDict[int, torch.Tensor] = OrderedDict()  # content hash -> features [num_embeds, H]
        self.weight_bytes = sum(p.numel() * p.element_size() for p in tower.parameters())

    @torch.inference_mode()
    def encode(self, items: list[Any]) -> list[torch.Tensor]:
        """Features [num_embeds, H] of each MediaItem, all tiles batched together."""
        if not items:
            return []
        tiles = torch.cat([item.pixel_values for item in items])
        out = []
        for start in range(0, tiles.shape[0], self.max_batch_tiles):
            batch = tiles[start : start + self.max_batch_tiles].to(self.device, self.dtype, non_blocking=True)
            out.append(self.tower(batch))
        feats = torch.cat(out).flatten(0, 1)
        sizes = [item.num_embeds for item in items]
        if sum(sizes) != feats.shape[0]:
            raise RuntimeError(f"vision features {feats.shape[0]} != placeholder tokens {sum(sizes)}")
        return list(feats.split(sizes))

    def input_embeds(self, sched: SchedulerOutput, input_ids: list[int], model: Any) -> torch.Tensor | None:
        """The step's input embeddings with vision features spliced in, or None when no chunk reaches media."""
        pieces = []  # (row in the flattened batch, item, first feature row, end feature row)
        passed = []  # content hashes whose last position this step computes
        row = 0
        for scheduled in sched.scheduled:
            seq = scheduled.seq
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + scheduled.num_new_tokens
            mm = seq.multimodal
            if mm is not None and start < mm.end:
                for item in mm.items:
                    k = 0
                    for a, b in item.ranges:
                        lo, hi = max(a, start), min(b, end)
                        if lo < hi:
                            pieces.append((row + lo - start, item, k + lo - a, k + hi - a))
                        k += b - a
                    if start < item.end <= end:
                        passed.append(item.content_hash)
            row += end - start
        if not pieces:
            return None
        todo = {item.content_hash: item for _, item, _, _ in pieces if item.content_hash not in self.cache}
        for h, feats in zip(todo, self.encode(list(todo.values())), strict=True):
            self.cache[h] = feats
        ids = torch.tensor(input_ids, dtype=torch.int64, device=self.device)
        embeds = model.embed_input_ids(ids)
        for dst, item, lo, hi in pieces:
            embeds[dst : dst + hi - lo] = self.cache[item.content_hash][lo:hi].to(embeds.dtype)
            self.cache.move_to_end(item.content_hash)
        for h in passed:
            self.cache.pop(h, None)
        while self.cache and sum(t.numel() * t.element_size() for t in self.cache.values()) > CACHE_BYTES:
            self.cache.popitem(last=False)
        return embeds
