"""Images and videos of a prompt as the engine carries them: pixels, where their embeddings go, their hashes.

    prompt ids:  ... user\\n <img> c c c c ... c </img> \\n Frame2: <img> c c ... c </img> ...
                             [ range 0 of item 0 )                [ range 1 ...       )
    MediaItem.ranges: the prompt positions [start, end) whose input embeddings the item's vision features
                      replace, in order: one range per image (tiles x tokens per tile), one per video frame.

The vision encoder turns an item's pixel tiles into exactly `num_embeds` rows, in range order. For the prefix cache
each placeholder position hashes as a virtual token id made of the item's content hash and the position's index
within the item (`MultimodalInputs.hash_key`): blocks holding the same image at the same place hit, blocks whose
images differ never do, although their token ids (all <IMG_CONTEXT>) are equal. No torch here: the scheduler and
block manager see only ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_MASK62 = (1 << 62) - 1
_MIX = 0x9E3779B97F4A7C15


@dataclass(slots=True)
class MediaItem:
    kind: str  # "image" | "video"
    pixel_values: Any  # torch.Tensor [tiles, 3, S, S] float32 on CPU: an image's tiles (+ thumbnail), a video's frames
    ranges: list[tuple[int, int]]  # prompt positions [start, end) its embeddings fill, in order
    content_hash: int  # 64-bit hash of the preprocessed pixels: equal pixels, equal hash

    @property
    def num_embeds(self) -> int:
        return sum(end - start for start, end in self.ranges)

    @property
    def end(self) -> int:
        """One past the last prompt position the item fills."""
        return self.ranges[-1][1]

    def virtual_id(self, k: int) -> int:
        """The id the prefix cache hashes for the item's k-th placeholder position (negative: never a real token)."""
        return -1 - ((self.content_hash ^ (k * _MIX)) & _MASK62)


@dataclass(slots=True)
class MultimodalInputs:
    """All media of one prompt, in prompt order. Shared (read-only) by the n samples of a request."""

    items: list[MediaItem]
    num_prompt_tokens: int  # the prompt's length (positions past it are generated tokens)
    _virtual: dict[int, int] = field(default_factory=dict)  # prompt position -> virtual id (placeholders only)

    def __post_init__(self) -> None:
        last = 0
        for item in self.items:
            k = 0
            for start, end in item.ranges:
                if not last <= start < end <= self.num_prompt_tokens:
                    raise ValueError(f"media ranges must be ordered, disjoint and inside the prompt: {item.ranges}")
                for pos in range(start, end):
                    self._virtual[pos] = item.virtual_id(k)
                    k += 1
                last = end

    @property
    def end(self) -> int:
        """One past the last placeholder position of the prompt."""
        return self.items[-1].end if self.items else 0

    @property
    def num_embeds(self) -> int:
        return sum(item.num_embeds for item in self.items)

    def hash_key(self, token_ids: list[int], start: int, end: int) -> tuple[int, ...]:
        """token_ids[start:end] with every placeholder replaced by its virtual id."""
        virtual = self._virtual
        if start >= self.end:
            return tuple(token_ids[start:end])
        return tuple(virtual.get(p, token_ids[p]) for p in range(start, end))
