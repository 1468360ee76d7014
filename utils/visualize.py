"""From raw attributions to pictures: channel reduction, polarity, robust normalisation,
colour overlays, the frame grid (PNG) and the animation (GIF).

Maps here are per clip: ``(T, H, W)`` numpy arrays; frames are RGB float ``(T, H, W, 3)`` in [0, 1].
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

POLARITIES = ("positive", "negative", "both")
GRID_COLUMNS = 8


def reduce_channels(attribution: np.ndarray) -> np.ndarray:
    """``(C, T, H, W)`` or ``(T, H, W)`` -> ``(T, H, W)``: signed sum over channels."""
    attribution = np.asarray(attribution, dtype=np.float32)
    return attribution.sum(axis=0) if attribution.ndim == 4 else attribution


def apply_polarity(saliency: np.ndarray, polarity: str) -> np.ndarray:
    """``positive``: evidence for the target; ``negative``: evidence against it, as positive
    magnitudes; ``both``: signed map unchanged."""
    if polarity == "positive":
        return np.maximum(saliency, 0.0)
    if polarity == "negative":
        return np.maximum(-saliency, 0.0)
    if polarity == "both":
        return saliency
    raise ValueError(f"unknown polarity {polarity!r}; choose from {', '.join(POLARITIES)}")


def normalize_map(saliency: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Scale one clip's map by a robust maximum (a high percentile of |map| over the whole
    clip, so frames stay comparable); result in [0, 1], or [-1, 1] for signed maps."""
    magnitude = np.abs(saliency)
    scale = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    if scale <= 0.0:
        scale = float(magnitude.max()) if magnitude.size else 0.0
    if scale <= 0.0:
        return np.zeros_like(saliency, dtype=np.float32)
    lower = -1.0 if (saliency < 0).any() else 0.0
    return np.clip(saliency / scale, lower, 1.0).astype(np.float32)


def frame_importance(saliency: np.ndarray) -> np.ndarray:
    """Share of the map's total magnitude in each frame, ``(T,)`` summing to 1 (zeros if empty)."""
    per_frame = np.abs(saliency).reshape(saliency.shape[0], -1).sum(axis=1).astype(np.float64)
    total = per_frame.sum()
    return per_frame / total if total > 0 else per_frame


def overlay(frames: np.ndarray, display_map: np.ndarray, style: str) -> np.ndarray:
    """Blend a normalised map onto frames.

    ``style``: ``"jet"`` (the reference's ``(1 - m^0.8) img + m^0.8 jet(m)``), ``"green"`` /
    ``"red"`` (single-colour evidence), or ``"diverging"`` (signed map, blue = against,
    red = for, opacity from |m|). Returns ``(T, H, W, 3)`` float in [0, 1].
    """
    if style == "diverging":
        alpha = np.abs(display_map)[..., None] ** 0.8
        colour = colormaps["coolwarm"]((display_map + 1.0) / 2.0)[..., :3]
    elif style == "jet":
        alpha = display_map[..., None] ** 0.8
        colour = colormaps["jet"](display_map)[..., :3]
    elif style in ("green", "red"):
        alpha = display_map[..., None] ** 0.8
        colour = np.zeros(display_map.shape + (3,), dtype=np.float32)
        colour[..., 1 if style == "green" else 0] = 1.0
    else:
        raise ValueError(f"unknown overlay style {style!r}")
    return np.clip((1.0 - alpha) * frames + alpha * colour, 0.0, 1.0)


def overlay_style(signed_method: bool, polarity: str) -> str:
    """Colour scheme: Grad-CAM-like maps use jet; signed methods green (for) / red (against),
    or a diverging map under ``both``."""
    if not signed_method:
        return "diverging" if polarity == "both" else "jet"
    return {"positive": "green", "negative": "red", "both": "diverging"}[polarity]


def render_grid(frames: np.ndarray, overlays: np.ndarray, title: str,
                importance: Optional[np.ndarray] = None,
                attention: Optional[np.ndarray] = None) -> Figure:
    """The reference layout: 8 columns; per block of 8 frames a row of frames and a row of
    overlays. Below it, bars of per-frame importance (and model attention, when given)."""
    num_frames = frames.shape[0]
    blocks = -(-num_frames // GRID_COLUMNS)
    bars = [b for b in (("map share\nper frame", importance, "tab:orange"),
                        ("model attention\nper frame", attention, "tab:blue")) if b[1] is not None]
    rows = 2 * blocks
    height_ratios = [1.0] * rows + [0.45] * len(bars)
    figure = Figure(figsize=(GRID_COLUMNS * 1.6, sum(height_ratios) * 1.6 + 0.6))
    grid = figure.add_gridspec(rows + len(bars), GRID_COLUMNS, height_ratios=height_ratios,
                               hspace=0.08, wspace=0.04)
    for block in range(blocks):
        for column in range(GRID_COLUMNS):
            t = block * GRID_COLUMNS + column
            for row, images in ((2 * block, frames), (2 * block + 1, overlays)):
                axis = figure.add_subplot(grid[row, column])
                axis.set_axis_off()
                if t < num_frames:
                    axis.imshow(images[t])
                    if row == 2 * block:
                        axis.set_title(f"t={t}", fontsize=7, pad=2)
    for offset, (label, values, colour) in enumerate(bars):
        axis = figure.add_subplot(grid[rows + offset, :])
        axis.bar(np.arange(num_frames), values, color=colour, width=0.8)
        axis.set_xlim(-0.5, num_frames - 0.5)
        axis.set_xticks(np.arange(num_frames))
        axis.tick_params(labelsize=6)
        axis.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    figure.suptitle(title, fontsize=9)
    return figure


def gif_frames(frames: np.ndarray, overlays: np.ndarray, min_side: int = 224) -> list:
    """Frames for the animation: the clip and its overlay side by side, upscaled for small clips."""
    pictures = []
    height, width = frames.shape[1:3]
    scale = max(1, int(np.ceil(min_side / min(height, width))))
    for frame, over in zip(frames, overlays):
        pair = np.concatenate([frame, over], axis=1)
        image = Image.fromarray((pair * 255).round().astype(np.uint8))
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        pictures.append(image)
    return pictures


def title_text(clip: str, label: Optional[str], prediction: str, probability: float,
               target: str, method: str, model: str, extra: Sequence[str] = ()) -> str:
    parts = [f"{clip}", f"label: {label or 'unknown'}",
             (f"prediction: {prediction}" + (f" ({probability:.2f})" if probability == probability else ""))
             if prediction else "",
             f"explained: {target}", f"{method} / {model}", *extra]
    return "   |   ".join(p for p in parts if p)
