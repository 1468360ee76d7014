"""Synthetic video clips whose evidence is known: where it is and when it is there.

Each clip shows one *evidence object*, a large circle that moves in a straight line. The
class is its direction of motion (``"circle moving left"``, ``"circle moving up"`` ...).
Everything else carries no class information:

- a smooth random texture in the background that pans in a random direction;
- static distractors (smaller squares, triangles, crosses) placed at random;
- moving distractors (the same shapes) moving in random directions at the same speeds as the
  evidence object.

So a model has to find the circle among other moving things and read its direction: it must
look at the right place. In *partial* clips the evidence object is present for only a contiguous part
of the clip (the rest shows distractors only), so it must also look at the right time.

Coordinates: ``x`` is the column, ``y`` the row, both in pixels of the stored frames; pixel
``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``. A box ``[x0, y0, x1, y1]`` bounds the
evidence mask in those edge coordinates (``x1 = last column + 1``). The velocity
(``regression_target``) is ``(vx, vy)`` in pixels per frame; ``vy < 0`` is upward motion.

Clips are written as ``<out>/<label>-<id>/000001.png ...`` plus ``ground_truth.json``,
the same layout as real data, and are deterministic from ``(seed, clip index)``::

    python -m utils.demo.synthetic --out test_data/synthetic --num_clips 8 --seed 0
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import cv2
import numpy as np

from utils.io.atomic import write_text
from utils.io.clips import frame_files, read_frame

EVIDENCE_SHAPE = "circle"
DIRECTIONS = ("left", "right", "up", "down")
DISTRACTOR_SHAPES = ("square", "triangle", "cross")
# Unit vectors in image coordinates (y grows downwards).
DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
GROUND_TRUTH_FILE = "ground_truth.json"
# Sizes and speeds are given for 112-pixel frames and scaled with the frame size.
REFERENCE_SIZE = 112


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings. Lengths and speeds are in pixels of a 112-pixel frame and are
    scaled by ``frame_size / 112``.

    Attributes:
        frame_size: side of the square frames.
        num_frames: frames per clip.
        object_radius: (min, max) radius of the evidence object.
        distractor_radius: (min, max) radius of the distractors.
        speed: (min, max) speed of the evidence object and moving distractors, px/frame.
        angle_jitter: the evidence object's direction deviates from its class direction by up
            to this many degrees (so the velocity is a continuous regression target).
        num_static: (min, max) number of static distractors.
        num_moving: (min, max) number of moving distractors.
        background_speed: (min, max) speed of the background pan, px/frame.
        background_contrast: amplitude of the background texture around its base colour.
        background_value: (min, max) HSV value (brightness) of the background's base colour.
        object_value: (min, max) HSV value of the objects' colours.
        partial_fraction: fraction of clips whose evidence is present in part of the clip only.
        partial_length: (min, max) fraction of the frames that hold the evidence in those clips.
    """

    frame_size: int = 112
    num_frames: int = 16
    object_radius: tuple = (11.0, 14.0)
    distractor_radius: tuple = (5.0, 8.0)
    speed: tuple = (1.5, 3.5)
    angle_jitter: float = 30.0
    num_static: tuple = (1, 3)
    num_moving: tuple = (1, 3)
    background_speed: tuple = (0.0, 1.5)
    background_contrast: float = 0.25
    background_value: tuple = (0.35, 0.65)
    object_value: tuple = (0.55, 1.0)
    partial_fraction: float = 0.0
    partial_length: tuple = (0.35, 0.6)

    @property
    def scale(self) -> float:
        return self.frame_size / REFERENCE_SIZE


@dataclass
class SyntheticClip:
    """One generated clip.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        label: class name; ``class_index`` its index in :func:`class_names`.
        masks: ``(T, H, W)`` bool, the evidence object's visible pixels.
        boxes: ``(T, 4)`` float ``[x0, y0, x1, y1]``; NaN rows where the evidence is absent.
        present: ``(T,)`` bool.
        velocity: ``(2,)`` float ``(vx, vy)`` of the evidence object, px/frame.
        info: everything else that was drawn (for the JSON file).
    """

    frames: np.ndarray
    label: str
    class_index: int
    masks: np.ndarray
    boxes: np.ndarray
    present: np.ndarray
    velocity: np.ndarray
    info: dict = field(default_factory=dict)


def class_names() -> list:
    """The classes in model output order, one per direction of :data:`DIRECTIONS`."""
    return [f"{EVIDENCE_SHAPE} moving {direction}" for direction in DIRECTIONS]


# ----------------------------------------------------------------------------------- shapes
def shape_mask(shape: str, center: Sequence[float], radius: float, angle: float,
               rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Hard-edged mask of one shape on the pixel grid ``rows (h, 1)``, ``cols (1, w)``.

    A pixel belongs to the shape when its integer coordinates fall inside it (no
    anti-aliasing, so the mask is exactly the set of pixels painted in the object's colour).
    ``angle`` rotates squares, triangles and crosses (radians).
    """
    dx = cols - center[0]
    dy = rows - center[1]
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    u = cos_a * dx + sin_a * dy
    v = -sin_a * dx + cos_a * dy
    if shape == "square":
        half = radius * math.sqrt(math.pi) / 2.0  # same area as a circle of this radius
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "cross":
        arm, width = radius * 1.05, radius * 0.36
        return ((np.abs(u) <= arm) & (np.abs(v) <= width)) | ((np.abs(v) <= arm) & (np.abs(u) <= width))
    if shape == "triangle":
        # Equilateral triangle with circumradius 1.25 * radius: three half-planes.
        inradius = 1.25 * radius / 2.0
        inside = np.ones(np.broadcast(u, v).shape, dtype=bool)
        for k in range(3):
            theta = math.pi / 2 + k * 2 * math.pi / 3
            inside &= (u * math.cos(theta) + v * math.sin(theta)) <= inradius
        return inside
    raise ValueError(f"unknown shape {shape!r}")


def _paint(frame: np.ndarray, shape: str, center: Sequence[float], radius: float, angle: float,
           color: np.ndarray) -> np.ndarray:
    """Paint a shape into ``frame (H, W, 3)`` in place; return its full-frame mask ``(H, W)``."""
    height, width = frame.shape[:2]
    reach = radius * 1.3 + 1
    r0, r1 = max(int(center[1] - reach), 0), min(int(center[1] + reach) + 2, height)
    c0, c1 = max(int(center[0] - reach), 0), min(int(center[0] + reach) + 2, width)
    mask = np.zeros((height, width), dtype=bool)
    if r0 >= r1 or c0 >= c1:
        return mask
    rows = np.arange(r0, r1, dtype=np.float32)[:, None]
    cols = np.arange(c0, c1, dtype=np.float32)[None, :]
    local = shape_mask(shape, center, radius, angle, rows, cols)
    frame[r0:r1, c0:c1][local] = color
    mask[r0:r1, c0:c1] = local
    return mask


def _random_color(rng: np.random.Generator, value: Sequence[float]) -> np.ndarray:
    """A saturated colour, so objects stand out from the low-saturation background."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(*value))
    return np.array(rgb, dtype=np.float32)


def _background(rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """Textured background ``(T, H, W, 3)`` float in [0, 1]: smooth noise panned over time."""
    size, frames = config.frame_size, config.num_frames
    speed = rng.uniform(*config.background_speed) * config.scale
    heading = rng.uniform(0, 2 * math.pi)
    velocity = np.array([math.cos(heading), math.sin(heading)]) * speed
    margin = int(math.ceil(speed * frames)) + 2
    side = size + 2 * margin
    noise = rng.standard_normal((side, side, 3)).astype(np.float32)
    # Two scales of texture: blobs and finer grain.
    coarse = cv2.GaussianBlur(noise, (0, 0), sigmaX=4.0 * config.scale)
    fine = cv2.GaussianBlur(noise[..., ::-1].copy(), (0, 0), sigmaX=1.2 * config.scale)
    texture = coarse / (coarse.std() + 1e-6) + 0.5 * fine / (fine.std() + 1e-6)
    texture = texture / (np.abs(texture).max() + 1e-6)
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.3),
                                        rng.uniform(*config.background_value)), dtype=np.float32)
    texture = np.clip(base + config.background_contrast * texture, 0.0, 1.0)
    out = np.empty((frames, size, size, 3), dtype=np.float32)
    start = np.array([margin, margin], dtype=np.float64)
    for t in range(frames):
        offset = start + velocity * t
        # Sub-pixel pan: sample the texture at (x + offset_x, y + offset_y).
        warp = np.array([[1, 0, offset[0]], [0, 1, offset[1]]], dtype=np.float32)
        out[t] = cv2.warpAffine(texture, warp, (size, size),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
    return out


def _trajectory_start(rng: np.random.Generator, velocity: np.ndarray, steps: int, size: int,
                      margin: float) -> np.ndarray:
    """A start point such that ``start + velocity * t`` stays ``margin`` inside the frame for
    ``t`` in ``[0, steps - 1]``."""
    travel = velocity * (steps - 1)
    start = np.empty(2)
    for axis in range(2):
        low = margin - min(travel[axis], 0.0)
        high = size - 1 - margin - max(travel[axis], 0.0)
        start[axis] = rng.uniform(low, high) if high > low else (size - 1 - travel[axis]) / 2.0
    return start


def generate_clip(index: int, seed: int = 0, config: SyntheticConfig = SyntheticConfig(),
                  class_index: Optional[int] = None, partial: Optional[bool] = None,
                  with_evidence: bool = True) -> SyntheticClip:
    """Clip number ``index`` of the set drawn with ``seed``; the same pair gives the same clip.

    ``class_index`` defaults to ``index % num_classes`` (balanced sets); ``partial`` defaults
    to a draw with probability ``config.partial_fraction``. ``with_evidence=False`` renders
    the same clip without the evidence object (the ground truth still describes where it
    would be): a counterfactual with no class information at all.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    names = class_names()
    if class_index is None:
        class_index = index % len(names)
    shape = EVIDENCE_SHAPE
    direction = DIRECTIONS[class_index]
    scale, size, frames = config.scale, config.frame_size, config.num_frames
    # Always drawn, so that forcing ``partial`` leaves every later draw of the clip unchanged.
    draw_partial = rng.uniform() < config.partial_fraction
    partial = draw_partial if partial is None else partial

    background = _background(rng, config)

    # When is the evidence visible?
    if partial:
        low = max(3, int(round(config.partial_length[0] * frames)))
        high = max(low, int(round(config.partial_length[1] * frames)))
        length = int(rng.integers(low, high + 1))
        first = int(rng.integers(0, frames - length + 1))
    else:
        length, first = frames, 0
    present = np.zeros(frames, dtype=bool)
    present[first:first + length] = True

    # The evidence object's motion: class direction plus bounded jitter.
    base = math.atan2(DIRECTION_VECTORS[direction][1], DIRECTION_VECTORS[direction][0])
    heading = base + math.radians(rng.uniform(-config.angle_jitter, config.angle_jitter))
    speed = rng.uniform(*config.speed) * scale
    velocity = np.array([math.cos(heading), math.sin(heading)]) * speed
    radius = rng.uniform(*config.object_radius) * scale
    start = _trajectory_start(rng, velocity, length, size, radius + 2)
    evidence = {"shape": shape, "radius": radius, "color": _random_color(rng, config.object_value),
                "start": start, "first_frame": first}

    # Distractors: shapes that never carry the class, random places, random directions.
    distractors = []
    for moving, count_range in ((False, config.num_static), (True, config.num_moving)):
        for _ in range(int(rng.integers(count_range[0], count_range[1] + 1))):
            d_radius = rng.uniform(*config.distractor_radius) * scale
            d_heading = rng.uniform(0, 2 * math.pi)
            d_speed = rng.uniform(*config.speed) * scale if moving else 0.0
            d_velocity = np.array([math.cos(d_heading), math.sin(d_heading)]) * d_speed
            distractors.append({
                "shape": DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))],
                "radius": d_radius, "angle": rng.uniform(0, 2 * math.pi),
                "color": _random_color(rng, config.object_value), "velocity": d_velocity,
                "start": _trajectory_start(rng, d_velocity, frames, size, d_radius * 0.5),
            })

    video = background
    masks = np.zeros((frames, size, size), dtype=bool)
    for t in range(frames):
        frame = video[t]
        for item in distractors:
            _paint(frame, item["shape"], item["start"] + item["velocity"] * t, item["radius"],
                   item["angle"], item["color"])
        if present[t]:
            # Drawn last: the evidence is never occluded, so its mask is what is visible.
            center = start + velocity * (t - first)
            canvas = frame if with_evidence else frame.copy()
            masks[t] = _paint(canvas, shape, center, radius, 0.0, evidence["color"])
    frames_u8 = np.clip(video * 255.0 + 0.5, 0, 255).astype(np.uint8)
    boxes = boxes_from_masks(masks)
    present = present & masks.any(axis=(1, 2))
    info = {
        "seed": int(seed), "index": int(index), "shape": shape, "direction": direction,
        "partial": bool(partial), "radius": float(radius), "start": [float(v) for v in start],
        "color": [int(v) for v in np.clip(evidence["color"] * 255.0 + 0.5, 0, 255)],
        "first_frame": first,
        "distractors": [{"shape": d["shape"], "moving": bool(np.any(d["velocity"] != 0)),
                         "velocity": [float(v) for v in d["velocity"]]} for d in distractors],
    }
    return SyntheticClip(frames=frames_u8, label=names[class_index], class_index=class_index,
                         masks=masks, boxes=boxes, present=present,
                         velocity=velocity.astype(np.float64), info=info)


def generate_clips(num_clips: int, seed: int = 0, config: SyntheticConfig = SyntheticConfig(),
                   start: int = 0) -> Iterator[SyntheticClip]:
    """Clips ``start .. start + num_clips - 1`` of the set drawn with ``seed``."""
    for index in range(start, start + num_clips):
        yield generate_clip(index, seed, config)


def generate_arrays(num_clips: int, seed: int = 0, config: SyntheticConfig = SyntheticConfig(),
                    start: int = 0) -> dict:
    """A set in memory, for training: ``frames (N, T, H, W, 3)`` uint8, ``labels (N,)`` int64,
    ``velocities (N, 2)`` float32, ``present (N, T)`` bool, ``masks (N, T, H, W)`` bool."""
    clips = list(generate_clips(num_clips, seed, config, start))
    return {
        "frames": np.stack([c.frames for c in clips]),
        "labels": np.array([c.class_index for c in clips], dtype=np.int64),
        "velocities": np.stack([c.velocity for c in clips]).astype(np.float32),
        "present": np.stack([c.present for c in clips]),
        "masks": np.stack([c.masks for c in clips]),
    }


# ------------------------------------------------------------------------ masks and boxes
def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``(T, 4)`` ``[x0, y0, x1, y1]`` (edge coordinates) of masks ``(T, H, W)``;
    NaN rows for empty masks."""
    boxes = np.full((masks.shape[0], 4), np.nan)
    for t, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[t] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def encode_mask(mask: np.ndarray) -> list:
    """Run-length code of a bool mask ``(H, W)`` in row-major order, starting with a run of
    False (possibly empty): ``[n_false, n_true, n_false, ...]``."""
    flat = np.concatenate([[False], mask.reshape(-1), [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat))
    bounds = np.concatenate([[0], edges, [mask.size]])
    counts = np.diff(bounds)
    if counts[-1] == 0:
        counts = counts[:-1]
    return [int(c) for c in counts]


def decode_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`."""
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    if flat.size != height * width:
        raise ValueError(f"mask code has {flat.size} pixels, expected {height}x{width}")
    return flat.reshape(height, width)


def ground_truth_of(clip: SyntheticClip) -> dict:
    """The ground truth of an in-memory clip, as :func:`load_ground_truth` returns it."""
    return {
        "label": clip.label,
        "class_index": int(clip.class_index),
        "boxes": clip.boxes.copy(),
        "masks": clip.masks.copy(),
        "present": clip.present.copy(),
        "regression_target": clip.velocity.astype(np.float64),
    }


# ------------------------------------------------------------------------------ disk I/O
def write_clip(clip: SyntheticClip, clip_dir: Union[str, Path], image_format: str = "png",
               jpeg_quality: int = 90, config: Optional[SyntheticConfig] = None) -> Path:
    """Write frames ``000001.<ext>`` ... and ``ground_truth.json`` into ``clip_dir``."""
    clip_dir = Path(clip_dir)
    clip_dir.mkdir(parents=True, exist_ok=True)
    ext = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}[image_format.lower()]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext == "jpg" else []
    names = []
    for t, frame in enumerate(clip.frames):
        name = f"{t + 1:06d}.{ext}"
        if not cv2.imwrite(str(clip_dir / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"could not write {clip_dir / name}")
        names.append(name)
    height, width = clip.masks.shape[1:]
    record = {
        "label": clip.label,
        "class_index": clip.class_index,
        "class_names": class_names(),
        "frame_size": [int(height), int(width)],
        "num_frames": int(clip.frames.shape[0]),
        "frames": names,
        "regression_target": [float(v) for v in clip.velocity],
        "regression_target_units": "pixels per frame, (vx, vy), y downwards",
        "present": [bool(p) for p in clip.present],
        "boxes": [None if np.isnan(b).any() else [float(v) for v in b] for b in clip.boxes],
        "box_format": "x0, y0, x1, y1 in pixel-edge coordinates (x1 = last column + 1)",
        "masks": [encode_mask(m) if p else None for m, p in zip(clip.masks, clip.present)],
        "mask_format": "row-major run lengths starting with background; null = absent",
        "info": clip.info,
    }
    if config is not None:
        record["config"] = asdict(config)
    write_text(clip_dir / GROUND_TRUTH_FILE, json.dumps(record, indent=1))
    return clip_dir


def write_dataset(out_dir: Union[str, Path], num_clips: int, seed: int = 0,
                  config: SyntheticConfig = SyntheticConfig(), image_format: str = "png",
                  jpeg_quality: int = 90, start: int = 0, progress: bool = False) -> list:
    """Write ``num_clips`` clips as ``<out_dir>/<label>-s<seed>_<index>/``; returns their folders."""
    out_dir = Path(out_dir)
    indices = range(start, start + num_clips)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="clips", unit="clip")
    written = []
    for index in indices:
        clip = generate_clip(index, seed, config)
        written.append(write_clip(clip, out_dir / f"{clip.label}-s{seed}_{index:05d}",
                                  image_format, jpeg_quality, config))
    return written


def load_frames(clip_dir: Union[str, Path]) -> np.ndarray:
    """The stored frames ``(T, H, W, 3)`` uint8 RGB, in natural file-name order."""
    frames = [read_frame(path) for path in frame_files(Path(clip_dir))]
    if not frames:
        raise FileNotFoundError(f"no frames in {clip_dir}")
    return np.stack(frames)


def load_ground_truth(clip_dir: Union[str, Path]) -> dict:
    """Ground truth of a written clip, for the frames as stored.

    Returns numpy arrays: ``boxes (T, 4)`` float ``[x0, y0, x1, y1]`` (NaN rows where the
    evidence is absent), ``masks (T, H, W)`` bool, ``present (T,)`` bool, ``label`` str,
    ``class_index`` int and ``regression_target (2,)`` float (velocity, px/frame).
    """
    path = Path(clip_dir) / GROUND_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (not a synthetic clip?)")
    record = json.loads(path.read_text())
    height, width = record["frame_size"]
    boxes = np.array([[np.nan] * 4 if b is None else b for b in record["boxes"]], dtype=np.float64)
    masks = np.stack([np.zeros((height, width), dtype=bool) if m is None
                      else decode_mask(m, height, width) for m in record["masks"]])
    return {
        "label": record["label"],
        "class_index": int(record["class_index"]),
        "boxes": boxes,
        "masks": masks,
        "present": np.array(record["present"], dtype=bool),
        "regression_target": np.array(record["regression_target"], dtype=np.float64),
    }


# ----------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.demo.synthetic",
        description="Write synthetic clips with known evidence (boxes, masks, velocity).")
    defaults = SyntheticConfig()
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per clip)")
    parser.add_argument("--num_clips", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first clip")
    parser.add_argument("--frame_size", type=int, default=defaults.frame_size)
    parser.add_argument("--num_frames", type=int, default=defaults.num_frames)
    parser.add_argument("--partial_fraction", type=float, default=defaults.partial_fraction,
                        help="fraction of clips with the evidence in part of the clip only")
    parser.add_argument("--num_static", type=int, nargs=2, default=defaults.num_static,
                        metavar=("MIN", "MAX"))
    parser.add_argument("--num_moving", type=int, nargs=2, default=defaults.num_moving,
                        metavar=("MIN", "MAX"))
    parser.add_argument("--image_format", choices=("png", "jpg"), default="png")
    parser.add_argument("--jpeg_quality", type=int, default=90)
    parser.add_argument("--progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    config = replace(SyntheticConfig(), frame_size=args.frame_size, num_frames=args.num_frames,
                     partial_fraction=args.partial_fraction, num_static=tuple(args.num_static),
                     num_moving=tuple(args.num_moving))
    written = write_dataset(args.out, args.num_clips, args.seed, config, args.image_format,
                            args.jpeg_quality, args.start, args.progress)
    print(f"wrote {len(written)} clips to {args.out}")


if __name__ == "__main__":
    main()
