"""Messages with images and videos -> prompt token ids + MultimodalInputs.

1. `extract_media`: each image/video content part (OpenAI `image_url` / `video_url`, HF `image` / `video`,
   LMDeploy `image_data`) is taken out of its message, in order, and the message's parts are joined into one
   string (as the InternVL/Intern-S1 chat templates join them: no separator) with a marker where it was.
   InternVL-style prompts that place images themselves with `<image>` (or LMDeploy's `<IMAGE_TOKEN>`) in the
   text keep that placement when the tags and the message's images are equally many.
2. The media are fetched and decoded (media.py, video.py) and tiled (preprocess.py).
3. Each marker becomes the model's placeholder text, as its HF processor writes it:
       image:  <img><IMG_CONTEXT> x (256 x tiles)</img>\\n          (\\n only for a content part, not a tag)
       video:  Frame1: <img><IMG_CONTEXT> x 256</img>\\nFrame2: ...</img>\\n
   the chat template renders the messages, and the text is tokenized piece by piece around the <IMG_CONTEXT>
   runs, whose positions become the MediaItem ranges. <img> and </img> are special tokens, so cutting the text
   next to them tokenizes exactly as the whole text would.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.multimodal import MediaItem, MultimodalInputs
from .media import MediaError, MediaPolicy, decode_image, load_bytes, to_rgb
from .preprocess import ImageProcessor, content_hash
from .video import VideoIO, decode_video

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
_TAG = re.compile(r"<image>|<IMAGE_TOKEN>")
_IMAGE_PARTS = {"image_url": "image_url", "image": "image", "image_data": "image_data"}
_VIDEO_PARTS = {"video_url": "video_url", "video": "video"}
MEDIA_PARTS = (*_IMAGE_PARTS, *_VIDEO_PARTS)  # content part types that carry media
MAX_MEDIA_PER_REQUEST = 64


@dataclass
class MediaRef:
    kind: str  # image | video
    source: Any  # URL / path string, PIL image, bytes, or a list of PIL frames (video)
    param: str  # the request field, e.g. messages[0].content[1]
    in_text: bool = False  # placed by an <image> tag in the text (no trailing newline)


def _part_source(part: Mapping[str, Any], key: str) -> Any:
    value = part.get(key)
    if isinstance(value, Mapping):
        value = value.get("url", value.get("data"))
    if value is None:
        value = part.get("url", part.get("path"))
    return value


def has_media(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for m in messages:
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, list) and any(
            isinstance(p, Mapping) and p.get("type") in (*_IMAGE_PARTS, *_VIDEO_PARTS) for p in content
        ):
            return True
    return False


def extract_media(messages: list[dict], marker: str) -> tuple[list[dict], list[MediaRef]]:
    """Messages whose media parts became `marker` (string content), and the media in prompt order."""
    out, refs = [], []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if not isinstance(content, list):
            out.append(msg)
            continue
        texts: list[str | MediaRef] = []
        own: list[MediaRef] = []
        for j, part in enumerate(content):
            kind = part.get("type", "text") if isinstance(part, Mapping) else None
            where = f"messages[{i}].content[{j}]"
            if kind == "text":
                texts.append(str(part.get("text") or ""))
            elif kind in _IMAGE_PARTS or kind in _VIDEO_PARTS:
                media_kind = "image" if kind in _IMAGE_PARTS else "video"
                source = _part_source(part, kind)
                if source is None:
                    raise MediaError(f"the {kind} part has no url", f"{where}.{kind}")
                ref = MediaRef(media_kind, source, f"{where}.{kind}")
                own.append(ref)
                texts.append(ref)
            else:
                raise MediaError(f"unsupported content part type {kind!r}; use text, image_url or video_url", where)
        images = [r for r in own if r.kind == "image"]
        tags = sum(len(_TAG.findall(t)) for t in texts if isinstance(t, str))
        if tags and tags == len(images):  # InternVL style: the text places its images
            queue = iter(images)
            pieces: list[str] = []
            for t in texts:
                if isinstance(t, str):
                    for _ in _TAG.findall(t):
                        ref = next(queue)
                        ref.in_text = True
                        refs.append(ref)
                    pieces.append(_TAG.sub(lambda _m: marker, t))
                elif t.kind == "video":
                    refs.append(t)
                    pieces.append(marker)
            out.append({**msg, "content": "".join(pieces)})
        else:
            refs.extend(own)
            out.append({**msg, "content": "".join(marker if isinstance(t, MediaRef) else t for t in texts)})
    if len(refs) > MAX_MEDIA_PER_REQUEST:
        raise MediaError(f"the request has {len(refs)} images and videos, more than {MAX_MEDIA_PER_REQUEST}",
                         "messages")
    return out, refs


@dataclass
class LoadedMedia:
    ref: MediaRef
    pixels: Any  # torch.Tensor [tiles, 3, S, S]


async def load_media(refs: list[MediaRef], processor: ImageProcessor, video_io: VideoIO,
                     policy: MediaPolicy) -> list[LoadedMedia]:  # fmt: skip
    """Fetch, decode and preprocess every reference (concurrently; CPU work off the event loop)."""

    async def one(ref: MediaRef) -> LoadedMedia:
        try:
            if ref.kind == "image":
                image = await _image(ref.source, policy)
                return LoadedMedia(ref, await asyncio.to_thread(processor.image, image))
            frames = ref.source
            if not isinstance(frames, list | tuple):
                data = await _bytes(frames, policy, "video")
                frames = await asyncio.to_thread(decode_video, data, video_io)
            else:
                frames = [to_rgb(f) for f in frames]
            return LoadedMedia(ref, await asyncio.to_thread(processor.video, list(frames)))
        except MediaError as e:
            raise MediaError(f"{ref.param}: {e}", e.param or ref.param) from None

    return list(await asyncio.gather(*(one(r) for r in refs)))


async def _bytes(source: Any, policy: MediaPolicy, kind: str) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if not isinstance(source, str):
        raise MediaError(f"a {kind} must be given as a URL string, got {type(source).__name__}")
    return await load_bytes(source, policy, kind)


async def _image(source: Any, policy: MediaPolicy) -> Any:
    if hasattr(source, "mode") and hasattr(source, "resize"):  # a PIL image (pipeline)
        return to_rgb(source)
    data = await _bytes(source, policy, "image")
    return await asyncio.to_thread(decode_image, data)


def placeholder_text(media: LoadedMedia, tokens_per_tile: int, ctx: str) -> str:
    """The text a media marker becomes; `ctx` stands for one run of <IMG_CONTEXT> tokens."""
    if media.ref.kind == "image":
        return f"{IMG_START}{ctx}{IMG_END}" + ("" if media.ref.in_text else "\n")
    frames = media.pixels.shape[0]
    return "\n".join(f"Frame{i + 1}: {IMG_START}{ctx}{IMG_END}" for i in range(frames)) + "\n"


def tokenize_with_media(
    text: str, ctx: str, media: list[LoadedMedia], tokens_per_tile: int, encode: Callable[[str], list[int]],
    context_id: int, bos_id: int | None = None,
) -> tuple[list[int], MultimodalInputs]:  # fmt: skip
    """Token ids of a rendered prompt whose <IMG_CONTEXT> runs are written as `ctx`, and where each run goes.
    `bos_id` is put first unless the text already starts with it (as AsyncEngine.encode_prompt does)."""
    pieces = text.split(ctx)
    runs = [(m, frame) for m in media
            for frame in range(m.pixels.shape[0] if m.ref.kind == "video" else 1)]  # fmt: skip
    if len(pieces) - 1 != len(runs):
        raise MediaError("the chat template dropped or repeated image placeholders; use the model's own template",
                         "messages")
    ids: list[int] = []
    ranges: dict[int, list[tuple[int, int]]] = {}
    for k, piece in enumerate(pieces):
        if piece:
            ids.extend(encode(piece))
        if k == 0 and bos_id is not None and (not ids or ids[0] != bos_id):
            ids.insert(0, bos_id)
        if k < len(runs):
            m, _ = runs[k]
            n = tokens_per_tile * (m.pixels.shape[0] if m.ref.kind == "image" else 1)
            ranges.setdefault(id(m), []).append((len(ids), len(ids) + n))
            ids.extend([context_id] * n)
    items = [MediaItem(m.ref.kind, m.pixels, ranges[id(m)], content_hash(m.pixels)) for m in media]
    return ids, MultimodalInputs(items, len(ids))


def new_markers() -> tuple[str, str]:
    """(media marker, context-run marker): random, so no user text can forge them."""
    tag = uuid.uuid4().hex
    return f"<|media-{tag}|>", f"<|ctx-{tag}|>"


def tuple_to_messages(prompt: tuple) -> list[dict]:
    """LMDeploy's VLM prompt `(text, image)` / `(text, [images])` as one user message, images first (as InternVL
    writes `<image>\\n` before the question). Images: PIL images, URLs, data URLs or local paths."""
    if len(prompt) != 2 or not isinstance(prompt[0], str):
        raise MediaError("a prompt tuple must be (text, image) or (text, [images])")
    text, images = prompt
    images = list(images) if isinstance(images, list | tuple) else [images]
    parts: list[dict] = []
    for image in images:
        if isinstance(image, str):
            parts.append({"type": "image_url", "image_url": {"url": image}})
        else:
            parts.append({"type": "image_data", "image_data": {"data": image}})
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]
