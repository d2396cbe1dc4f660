"""The engine's front for images and videos: messages with media -> (prompt ids, MultimodalInputs).

Owned by the AsyncEngine of a multimodal checkpoint; see prompt.py for the steps and the placeholder layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine.multimodal import MultimodalInputs
from ..model_dir import ModelInfo
from ..models.internvit import VisionSpec
from .media import MediaError, MediaPolicy
from .preprocess import ImageProcessor
from .prompt import (
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    extract_media,
    load_media,
    new_markers,
    placeholder_text,
    tokenize_with_media,
)
from .video import VideoIO


class VisionFrontend:
    def __init__(self, info: ModelInfo, token_to_id: Callable[[str], int | None],
                 media_io_kwargs: dict | None = None) -> None:  # fmt: skip
        spec = VisionSpec.from_root_config(info.root_config or {}, int(info.config["hidden_size"]))
        self.tokens_per_tile = spec.tokens_per_tile
        self.processor = ImageProcessor.from_checkpoint(info.path, info.root_config or {}, spec.image_size,
                                                        spec.tokens_per_tile)  # fmt: skip
        self.video_io = VideoIO.from_kwargs(media_io_kwargs)
        ids = {t: token_to_id(t) for t in (IMG_START, IMG_END, IMG_CONTEXT)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"the tokenizer of {info.path} has no {', '.join(missing)} token: it cannot mark images")
        self.context_id = int(ids[IMG_CONTEXT])  # type: ignore[arg-type]

    async def encode(
        self,
        messages: list[dict],
        render: Callable[[list[dict]], str],
        encode: Callable[[str], list[int]],
        bos_id: int | None,
        policy: MediaPolicy,
        session_len: int,
    ) -> tuple[list[int], MultimodalInputs]:
        """Token ids and media of a conversation; MediaError (a 400) for media that cannot be used."""
        marker, ctx = new_markers()
        flat, refs = extract_media(messages, marker)
        loaded = iter(await load_media(refs, self.processor, self.video_io, policy))
        media = []
        with_text = []
        for msg in flat:
            content = msg.get("content")
            if isinstance(content, str) and marker in content:
                parts = content.split(marker)
                out = [parts[0]]
                for part in parts[1:]:
                    item = next(loaded)
                    media.append(item)
                    out += [placeholder_text(item, self.tokens_per_tile, ctx), part]
                msg = {**msg, "content": "".join(out)}
            with_text.append(msg)
        text = render(with_text)
        ids, mm = tokenize_with_media(text, ctx, media, self.tokens_per_tile, encode, self.context_id, bos_id)
        if len(ids) >= session_len:
            frames = sum(m.pixels.shape[0] for m in media if m.ref.kind == "video")
            what = f"{len(media)} images and videos" + (f" ({frames} video frames)" if frames else "")
            raise MediaError(
                f"the prompt takes {len(ids)} tokens, {mm.num_embeds} of them for its {what}, but session_len is "
                f"{session_len}: send fewer or smaller images, sample fewer frames (--media-io-kwargs "
                "'{\"video\": {\"num_frames\": N}}') or raise --session-len", "messages")
        return ids, mm

    def describe(self) -> dict[str, Any]:
        return {"tokens_per_tile": self.tokens_per_tile, "max_tiles": self.processor.max_tiles,
                "video_frames": self.video_io.num_frames}  # fmt: skip
