"""Finding clips, decoding frames, sampling them to a model's clip length, preprocessing.

A clip is either a folder of frame images or a video file. Frames come out as ``uint8`` arrays
``(T, H, W, 3)`` in RGB; :func:`preprocess` turns them into a float clip ``(3, T, crop, crop)``
in ``[0, 1]`` (normalisation is the model spec's job).
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

FRAME_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif"})

# A frame whose long side is more than MAX_ASPECT times its short side is refused: resizing its
# short side to the model's would blow the long side up to gigabytes.
MAX_ASPECT = 10.0
# Frames above this many pixels (8192 x 8192) are refused before decoding; Pillow itself refuses
# twice its MAX_IMAGE_PIXELS (179 M) as a decompression bomb.
MAX_FRAME_PIXELS = 8192 * 8192


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


def _is_hidden(path: Path) -> bool:
    """Hidden files and folders, including the ``._*`` companions macOS leaves on shared drives."""
    return path.name.startswith(".")


def _is_frame(path: Path) -> bool:
    return not _is_hidden(path) and path.suffix.lower() in FRAME_EXTENSIONS and path.is_file()


def _is_video(path: Path) -> bool:
    return not _is_hidden(path) and path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file()


def frame_files(folder: Path) -> List[Path]:
    """Frame images in ``folder`` in natural order; hidden and other files are ignored."""
    return sorted((p for p in folder.iterdir() if _is_frame(p)), key=lambda p: natural_key(p.name))


def _clip_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` (an entry of ``root``) is a clip folder; symlinks that loop, dangle or
    point back at ``root`` or above it are skipped with a warning."""
    if _is_hidden(path):
        return False
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError) as error:   # ELOOP, dangling link
            warnings.warn(f"skipped {path.name}: unusable symbolic link "
                          f"({getattr(error, 'strerror', None) or error})", stacklevel=3)
            return False
        if target.is_dir() and (target == root or target in root.parents):
            warnings.warn(f"skipped {path.name}: symbolic link loop back to {target}",
                          stacklevel=3)
            return False
    return path.is_dir()


def find_clips(videos_dir: Path) -> List[ClipSource]:
    """Clips named by ``--videos_dir``: a folder of clip folders and/or video files, one clip
    folder (frames only), or one video file. Sub-folders are clips even when empty (reported when
    read). Frames lying beside clip folders or video files are ignored with a warning naming
    them; hidden files and folders (``.*``, ``._*``) are ignored everywhere."""
    videos_dir = Path(videos_dir)
    if not videos_dir.exists():
        raise FileNotFoundError(f"--videos_dir {videos_dir} does not exist")
    if videos_dir.is_file():
        if videos_dir.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(f"{videos_dir} is not a video file "
                             f"({', '.join(sorted(VIDEO_EXTENSIONS))})")
        return [ClipSource(videos_dir, True)]
    root = videos_dir.resolve()
    entries = sorted(videos_dir.iterdir(), key=lambda p: natural_key(p.name))
    frames = [p for p in entries if _is_frame(p)]
    clips = [ClipSource(p, False) for p in entries if _clip_folder(p, root)]
    clips += [ClipSource(p, True) for p in entries if _is_video(p)]
    if frames and not clips:
        return [ClipSource(videos_dir, False)]
    if frames:
        shown = ", ".join(p.name for p in frames[:5]) + (f" … ({len(frames)} in all)"
                                                         if len(frames) > 5 else "")
        warnings.warn(f"{videos_dir}: ignored {len(frames)} frame file(s) beside the clip "
                      f"folders and videos: {shown}", stacklevel=2)
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


def _check_size(width: int, height: int, what: str) -> None:
    """Refuse frames whose size would make resizing allocate absurd amounts of memory."""
    if width <= 0 or height <= 0:
        raise ClipError(f"{what} has no pixels ({width}x{height})")
    if width * height > MAX_FRAME_PIXELS:
        raise ClipError(f"{what} is {width}x{height}, more than {MAX_FRAME_PIXELS} pixels")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ClipError(f"{what} is {width}x{height}: aspect ratio above {MAX_ASPECT:g}:1")


def _shrunk_size(height: int, width: int, resize: Optional[int]) -> Tuple[int, int]:
    """(height, width) with the short side brought down to ``resize`` (never enlarged)."""
    if resize is None or min(height, width) <= resize:
        return height, width
    scale = resize / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(frame: np.ndarray, resize: Optional[int]) -> np.ndarray:
    """Bring the short side of ``uint8 (H, W, 3)`` down to ``resize`` with the filter of
    :func:`preprocess` (bilinear, antialiased), so that ``preprocess`` with the same ``resize``
    then has nothing left to resize. Frames already small enough are returned as they are."""
    height, width = frame.shape[:2]
    if _shrunk_size(height, width, resize) == (height, width):
        return frame
    image = torch.from_numpy(np.require(frame, requirements=["C", "W"])).permute(2, 0, 1)
    return _shrink_tensor(image, resize).numpy()


def _shrink_tensor(image: torch.Tensor, resize: Optional[int]) -> torch.Tensor:
    """:func:`shrink` on a ``uint8 (3, H, W)`` tensor on any device; gives ``(H', W', 3)``."""
    new_h, new_w = _shrunk_size(image.shape[1], image.shape[2], resize)
    if (new_h, new_w) == tuple(image.shape[1:]):
        return image.permute(1, 2, 0)
    image = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear",
                          align_corners=False, antialias=True)
    return image[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """``uint8 (H, W, 3)`` of any Pillow mode: 16/32-bit grey scaled from its full range
    (65535 -> 255), transparency composed over black, CMYK, palette and 1-bit converted."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image)
        if mode == "F":  # floats are taken as [0, 1]
            grey = np.clip(np.nan_to_num(values) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:  # 16-bit range; 32-bit integer images (mode I) come from 16-bit files
            wide = np.clip(values.astype(np.int64), 0, 65535)
            grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become black rather than whatever colour they happened to store.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"))


def _frame_error(path: Path, error: BaseException) -> ClipError:
    if isinstance(error, UnidentifiedImageError):
        reason = "not an image file (or a format Pillow cannot read)"
    elif isinstance(error, Image.DecompressionBombError):
        reason = f"too many pixels (more than {MAX_FRAME_PIXELS})"
    elif isinstance(error, (OSError, ValueError, SyntaxError, EOFError)) and str(error).strip():
        reason = " ".join(str(error).split())
    else:  # IndexError, struct.error, zlib.error ... from a corrupt file: their text says nothing
        reason = f"corrupt image data ({type(error).__name__})"
    return ClipError(f"cannot read frame {path.name}: {reason}")


def read_frame(path: Path, resize: Optional[int] = None) -> np.ndarray:
    """One frame as ``uint8 (H, W, 3)`` RGB, EXIF orientation applied. With ``resize`` the short
    side is brought down to ``resize`` right after decoding (JPEGs are decoded at a reduced
    scale when that is at least twice the wanted size). The size is checked from the header
    before any pixel is decoded."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ClipError(f"cannot read frame {path.name}: empty file")
        with Image.open(path) as image:
            width, height = image.size
            _check_size(width, height, f"frame {path.name}")
            if resize is not None and image.format == "JPEG" and image.mode in ("RGB", "L"):
                orientation = image.getexif().get(0x0112, 1)
                want = (width, height) if orientation in (1, 2, 3, 4) else (height, width)
                new_h, new_w = _shrunk_size(want[1], want[0], resize)
                if (new_h, new_w) != (want[1], want[0]):
                    # draft keeps the decoded size >= the requested one
                    box = (new_w, new_h) if orientation in (1, 2, 3, 4) else (new_h, new_w)
                    image.draft(image.mode, box)
            image.load()
            image = ImageOps.exif_transpose(image)
            return shrink(_to_rgb_array(image), resize)
    except ClipError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # Pillow raises many kinds on corrupt data; one line for all
        raise _frame_error(path, error) from None


# torchvision 0.29 warns on every decode_jpeg call that its image decoders are deprecated.
DECODE_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def ignore_decoder_deprecation() -> None:
    """Call inside a ``warnings.catch_warnings()`` block that shows warnings: torchvision's
    deprecation notice, repeated per clip, would bury the clips' own warnings."""
    warnings.filterwarnings("ignore", message=DECODE_DEPRECATION, category=DeprecationWarning)


def _plain_jpeg(data: bytes) -> bool:
    """Whether ``data`` is a JPEG that decode_jpeg reads as Pillow does: RGB or grey, upright
    (no EXIF rotation), a size :func:`read_frame` accepts, and ending in its end marker (a
    truncated file is left to Pillow, which refuses it)."""
    if not data.endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return False
            _check_size(*image.size, "frame")
            return image.getexif().get(0x0112, 1) == 1
    except Exception:  # noqa: BLE001 - anything odd is Pillow's to read and report
        return False


def decode_jpeg_frames(paths: Sequence[Path], resize: Optional[int], device
                       ) -> Optional[List[np.ndarray]]:
    """The frames at ``paths`` decoded in one ``torchvision.io.decode_jpeg`` call on ``device``
    (nvjpeg on CUDA) and shrunk there as :func:`read_frame` does; ``uint8 (H, W, 3)`` each.
    None when a file is not a plain JPEG (:func:`_plain_jpeg`) or the decoder is missing or
    raises: the caller then reads them with :func:`read_frame`, whose errors name the frame.
    Pictures can differ from Pillow's where Pillow decodes at a reduced scale (``resize``)."""
    try:
        import torchvision.io as tv_io

        datas = [Path(path).read_bytes() for path in paths]
        if not all(_plain_jpeg(data) for data in datas):
            return None
        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
        images = tv_io.decode_jpeg(tensors, mode=tv_io.ImageReadMode.RGB, device=device)
        return [_shrink_tensor(image, resize).contiguous().cpu().numpy() for image in images]
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001 - no CUDA, no nvjpeg, a frame it refuses: Pillow reads
        return None


def _video_error(path: Path, error: BaseException) -> ClipError:
    # FFmpeg errors carry the file name in their text; strerror is the reason alone.
    reason = getattr(error, "strerror", None) or " ".join(str(error).split()) or \
        type(error).__name__
    return ClipError(f"cannot decode video {path.name}: {reason}")


def _sample_gif(path: Path, clip_length: int, resize: Optional[int]) -> Tuple[List[np.ndarray], int]:
    try:
        with Image.open(path) as image:
            _check_size(*image.size, f"video {path.name}")
            total = getattr(image, "n_frames", 1)
            indices = sample_indices(total, clip_length)
            kept: Dict[int, np.ndarray] = {}
            for index in sorted(set(indices.tolist())):
                image.seek(index)
                kept[index] = shrink(_to_rgb_array(image.copy()), resize)
    except ClipError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:
        raise _video_error(path, error) from None
    return [kept[i] for i in indices], total


def _count_packets(container, stream) -> int:
    """Frames of ``stream`` counted by demuxing (no decoding); packets without data (the
    demuxer's end markers) are not frames."""
    container.seek(0)
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode_selected(container, stream, wanted: set, resize: Optional[int], data_errors: tuple
                     ) -> Tuple[Dict[int, np.ndarray], int]:
    """Decode ``stream`` from the start in order; convert only the frames at ``wanted`` indices
    (shrunk right away). Returns them and the number of frames decoded; corrupt data after the
    first frame ends the stream there (a truncated file), before it is an error."""
    kept: Dict[int, np.ndarray] = {}
    count = 0
    last = max(wanted)
    frames = container.decode(stream)
    while count <= last:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except data_errors:
            if count == 0:
                raise
            break
        if count in wanted:
            kept[count] = shrink(frame.to_ndarray(format="rgb24"), resize)
        count += 1
    return kept, count


def _sample_video(path: Path, clip_length: int, resize: Optional[int]
                  ) -> Tuple[List[np.ndarray], int]:
    """Sample ``clip_length`` frames of a video with PyAV, holding only the sampled frames."""
    import av  # PyAV: optional import so frame folders work without it

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise ClipError(f"video {path.name} has no video stream "
                                f"(streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            if stream.width and stream.height:
                _check_size(stream.width, stream.height, f"video {path.name}")
            stream.thread_type = "AUTO"
            promised = int(stream.frames or 0)
            total = promised if promised > 0 else _count_packets(container, stream)
            if total <= 0:
                raise ClipError(f"video {path.name} has no frames")
            container.seek(0)
            indices = sample_indices(total, clip_length)
            data_errors = (av.error.InvalidDataError, av.error.EOFError)
            kept, decoded = _decode_selected(container, stream, set(indices.tolist()), resize,
                                             data_errors)
            if decoded < total and max(indices) >= decoded:
                # The container promised more frames than it holds: decode the real ones again.
                warnings.warn(f"{path.name}: decoded {decoded} of {total} frames", stacklevel=3)
                if decoded == 0:
                    raise ClipError(f"video {path.name}: no frame could be decoded")
                total = decoded
                indices = sample_indices(total, clip_length)
                container.seek(0)
                kept, _ = _decode_selected(container, stream, set(indices.tolist()), resize,
                                           data_errors)
    except ClipError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # FFmpeg errors, unsupported containers, OS errors
        raise _video_error(path, error) from None
    missing = [i for i in indices if i not in kept]
    if missing:
        raise ClipError(f"video {path.name}: frame {missing[0]} of {total} could not be decoded")
    return [kept[i] for i in indices], total


def _sample_video_torchcodec(path: Path, clip_length: int, resize: Optional[int], device
                             ) -> Optional[Tuple[List[np.ndarray], int]]:
    """``clip_length`` frames of a video decoded by torchcodec on ``device`` (NVDEC on CUDA),
    shrunk there; None when torchcodec is missing or fails: PyAV then reads the video and
    reports its errors."""
    try:
        from torchcodec.decoders import VideoDecoder  # optional: PyAV reads videos without it

        decoder = VideoDecoder(str(path), device=device)
        metadata = decoder.metadata
        if metadata.width and metadata.height:
            _check_size(metadata.width, metadata.height, f"video {path.name}")
        total = len(decoder)
        indices = sample_indices(total, clip_length)
        unique = sorted(set(indices.tolist()))
        batch = decoder.get_frames_at(unique).data                       # (N, 3, H, W)
        kept = {index: _shrink_tensor(frame, resize).contiguous().cpu().numpy()
                for index, frame in zip(unique, batch)}
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001 - no torchcodec, FFmpeg or GPU, an odd file: PyAV reads
        return None
    return [kept[i] for i in indices], total


def load_frames(clip: ClipSource, clip_length: int, resize: Optional[int] = None,
                decode_device=None) -> tuple:
    """Read ``clip_length`` frames sampled uniformly over the clip; only the sampled frames are
    converted and kept.

    ``resize``: when given, each kept frame's short side is brought down to ``resize`` right
    after decoding (never enlarged; pass the model's ``resize`` so memory depends on the model
    input, not on the source resolution).

    ``decode_device``: when given (the run's CUDA device), a frame folder's JPEGs are decoded
    there in one batch (:func:`decode_jpeg_frames`) and a video by torchcodec where it is
    installed, each falling back to Pillow or PyAV; None: Pillow and PyAV.

    Returns ``(frames, num_source_frames)`` with ``frames`` ``uint8 (clip_length, H, W, 3)``.
    Warns (``UserWarning``) when a short clip is looped or a video holds fewer frames than its
    container announces.
    """
    if clip.is_video:
        if clip.path.suffix.lower() == ".gif":
            frames, total = _sample_gif(clip.path, clip_length, resize)
        else:
            sampled = (None if decode_device is None else
                       _sample_video_torchcodec(clip.path, clip_length, resize, decode_device))
            frames, total = sampled or _sample_video(clip.path, clip_length, resize)
    else:
        files = frame_files(clip.path)
        if not files:
            raise ClipError(f"folder {clip.path.name} holds no frames "
                            f"({', '.join(sorted(FRAME_EXTENSIONS))})")
        indices = sample_indices(len(files), clip_length)
        cache: Dict[int, np.ndarray] = {}
        if decode_device is not None:
            unique = sorted(set(indices.tolist()))
            decoded = decode_jpeg_frames([files[i] for i in unique], resize, decode_device)
            cache.update(zip(unique, decoded or []))
        frames = []
        for i in indices:
            if i not in cache:
                cache[i] = read_frame(files[i], resize)
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
