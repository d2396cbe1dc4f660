"""Videos: decode with PyAV (FFmpeg) and sample frames as `--media-io-kwargs '{"video": {...}}'` says.

    num_frames  at most this many frames (default 32)
    fps         at most this many frames per second of video (default: no limit)

The frames taken are the middles of n equal segments of the video, n = min(num_frames, duration * fps, total),
as InternVL samples them. Only the chosen frames are converted to RGB.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from .media import MediaError

MAX_DECODED_FRAMES = 200_000  # a stream claiming more is refused before decoding


@dataclass(frozen=True)
class VideoIO:
    num_frames: int = 32  # frames sampled per video at most (> 0)
    fps: float | None = None  # frames per second of video sampled at most

    @classmethod
    def from_kwargs(cls, media_io_kwargs: dict | None) -> VideoIO:
        """From the `--media-io-kwargs` JSON object (vLLM's flag): its "video" entry."""
        kwargs = dict((media_io_kwargs or {}).get("video") or {})
        unknown = set(kwargs) - {"num_frames", "fps"}
        if unknown:
            raise ValueError(f"--media-io-kwargs video: unknown keys {sorted(unknown)} (known: num_frames, fps)")
        num_frames = kwargs.get("num_frames", cls.num_frames)
        fps = kwargs.get("fps")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"--media-io-kwargs video.num_frames must be a positive integer, got {num_frames!r}")
        if fps is not None and (not isinstance(fps, int | float) or fps <= 0):
            raise ValueError(f"--media-io-kwargs video.fps must be a positive number, got {fps!r}")
        return cls(num_frames, float(fps) if fps is not None else None)


def sample_indices(total: int, video_fps: float | None, io_cfg: VideoIO) -> list[int]:
    """Indices of the frames to take from a video of `total` frames at `video_fps`."""
    n = min(total, io_cfg.num_frames)
    if io_cfg.fps and video_fps:
        n = min(n, max(1, math.floor(total / video_fps * io_cfg.fps)))
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


def decode_video(data: bytes, io_cfg: VideoIO) -> list[Any]:
    """The sampled frames of an encoded video (mp4, webm, avi...) as RGB PIL images."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("the video has no video stream")
            stream = container.streams.video[0]
            total = int(stream.frames or 0)
            rate = float(stream.average_rate) if stream.average_rate else None
            if total <= 0 and stream.duration and stream.time_base and rate:
                total = int(float(stream.duration * stream.time_base) * rate)
            if total > MAX_DECODED_FRAMES:
                raise MediaError(f"the video has {total} frames, more than the {MAX_DECODED_FRAMES} decoded at most")
            if total <= 0:  # no frame count in the container: count by decoding
                total = sum(1 for _ in container.decode(stream))
                container.seek(0)
            if total <= 0:
                raise MediaError("the video has no frames")
            wanted = sample_indices(total, rate, io_cfg)
            frames: list[Any] = []
            last = None
            targets = iter(wanted)
            target = next(targets)
            for index, frame in enumerate(container.decode(stream)):
                last = frame
                while target is not None and index == target:
                    frames.append(frame.to_image())
                    target = next(targets, None)
                if target is None or index >= MAX_DECODED_FRAMES:
                    break
            while len(frames) < len(wanted) and last is not None:  # the container promised more frames than it had
                frames.append(last.to_image())
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise MediaError(f"the video cannot be decoded: {e}") from None
    if not frames:
        raise MediaError("the video has no decodable frames")
    return [f if f.mode == "RGB" else f.convert("RGB") for f in frames]
