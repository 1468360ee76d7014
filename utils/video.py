"""Finding clips, decoding frames, sampling them to a model's clip length, preprocessing.

A clip is either a folder of frame images or a video file. Frames come out as ``uint8`` arrays
``(T, H, W, 3)`` in RGB; :func:`preprocess` turns them into a float clip ``(3, T, crop, crop)``
in ``[0, 1]`` (normalisation is the model spec's job).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence, UnidentifiedImageError

FRAME_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif"})


class ClipError(RuntimeError):
    """A clip that cannot be read (empty folder, corrupt frame, undecodable video)."""


@dataclass(frozen=True)
class ClipSource:
    """One clip: ``path`` is a frame folder or a video file; ``name`` is used in file names."""

    path: Path
    is_video: bool

    @property
    def name(self) -> str:
        return self.path.stem if self.is_video else self.path.name


def natural_key(text: str) -> list:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _is_frame(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in FRAME_EXTENSIONS


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def frame_files(folder: Path) -> List[Path]:
    """Frame images in ``folder`` in natural order; other files are ignored."""
    return sorted((p for p in folder.iterdir() if _is_frame(p)), key=lambda p: natural_key(p.name))


def find_clips(videos_dir: Path) -> List[ClipSource]:
    """Clips named by ``--videos_dir``: a folder of clip folders and/or video files, one clip
    folder, or one video file. Sub-folders are clips even when empty (reported when read)."""
    videos_dir = Path(videos_dir)
    if not videos_dir.exists():
        raise FileNotFoundError(f"--videos_dir {videos_dir} does not exist")
    if videos_dir.is_file():
        if not _is_video(videos_dir):
            raise ValueError(f"{videos_dir} is not a video file "
                             f"({', '.join(sorted(VIDEO_EXTENSIONS))})")
        return [ClipSource(videos_dir, True)]
    entries = sorted(videos_dir.iterdir(), key=lambda p: natural_key(p.name))
    if any(_is_frame(p) for p in entries):
        return [ClipSource(videos_dir, False)]
    clips = [ClipSource(p, False) for p in entries if p.is_dir() and not p.name.startswith(".")]
    clips += [ClipSource(p, True) for p in entries if _is_video(p)]
    clips.sort(key=lambda c: natural_key(c.path.name))
    if not clips:
        raise ValueError(f"{videos_dir} holds no clip folders, frames or video files")
    return clips


def sample_indices(num_frames: int, clip_length: int) -> np.ndarray:
    """Indices of ``clip_length`` frames spread uniformly over ``num_frames`` (centre of each
    segment); a shorter clip is looped to length."""
    if num_frames <= 0:
        raise ClipError("clip has no frames")
    if num_frames < clip_length:
        return np.arange(clip_length) % num_frames
    return np.floor((np.arange(clip_length) + 0.5) * num_frames / clip_length).astype(int)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent pixels become black rather than whatever colour they happened to store.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"))


def read_frame(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return _to_rgb_array(image)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ClipError(f"cannot read frame {path.name}: {error}") from None


def _decode_gif(path: Path) -> List[np.ndarray]:
    with Image.open(path) as image:
        return [_to_rgb_array(frame.copy()) for frame in ImageSequence.Iterator(image)]


def _decode_video(path: Path) -> List[np.ndarray]:
    import av  # PyAV: optional import so frame folders work without it

    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, IndexError, OSError) as error:
        raise ClipError(f"cannot decode video {path.name}: {error}") from None
    return frames


def load_frames(clip: ClipSource, clip_length: int) -> tuple:
    """Read ``clip_length`` frames sampled uniformly over the clip.

    Returns ``(frames, num_source_frames)`` with ``frames`` ``uint8 (clip_length, H, W, 3)``.
    Warns (``UserWarning``) when a short clip is looped.
    """
    if clip.is_video:
        decoded = _decode_gif(clip.path) if clip.path.suffix.lower() == ".gif" \
            else _decode_video(clip.path)
        if not decoded:
            raise ClipError(f"video {clip.path.name} has no frames")
        indices = sample_indices(len(decoded), clip_length)
        frames = [decoded[i] for i in indices]
        total = len(decoded)
    else:
        files = frame_files(clip.path)
        if not files:
            raise ClipError(f"folder {clip.path.name} holds no frames "
                            f"({', '.join(sorted(FRAME_EXTENSIONS))})")
        indices = sample_indices(len(files), clip_length)
        cache = {}
        frames = []
        for i in indices:
            if i not in cache:
                cache[i] = read_frame(files[i])
            frames.append(cache[i])
        total = len(files)
    if total < clip_length:
        warnings.warn(f"{clip.name}: {total} frames, looped to {clip_length}", stacklevel=2)
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise ClipError(f"{clip.name}: frames differ in size {sorted(shapes)}")
    return np.stack(frames), total


def preprocess(frames: np.ndarray, resize: int, crop: int) -> torch.Tensor:
    """Resize the short side to ``resize`` (aspect kept, bilinear with antialiasing), centre
    crop ``crop`` x ``crop``.

    ``frames``: ``uint8 (T, H, W, 3)``. Returns float ``(3, T, crop, crop)`` in ``[0, 1]``.
    """
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    height, width = video.shape[-2:]
    scale = resize / min(height, width)
    new_h, new_w = max(crop, round(height * scale)), max(crop, round(width * scale))
    if (new_h, new_w) != (height, width):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear",
                              align_corners=False, antialias=True).clamp_(0.0, 1.0)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    video = video[:, :, top:top + crop, left:left + crop]
    return video.permute(1, 0, 2, 3).contiguous()


def stack_clips(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[(C, T, H, W), ...]`` -> ``(N, C, T, H, W)``."""
    return torch.stack(list(clips))
