"""One call per map: colour it once and write the requested formats (frame grid, animations);
the comparison figure of several methods on one clip."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

try:                                  # ISA-L's deflate: ~3x zlib's speed at level 1 (PNG only)
    from isal import isal_zlib
except ImportError:                   # pragma: no cover - isal is in requirements.txt
    isal_zlib = None

from utils.render import figures as visualize

from utils.render.encoders import ANIMATION_MIN_SIDE, save_gif, save_mp4, save_png
from utils.render.formats import RENDERED as RENDER_FORMATS


def write_visuals(folder: Path, stem: str, formats: Sequence[str], frames: np.ndarray,
                  display_map: np.ndarray, style: str, caption: visualize.Caption,
                  importance: Optional[np.ndarray] = None, attention: Optional[np.ndarray] = None,
                  time_steps: Optional[int] = None,
                  animation_min_side: int = ANIMATION_MIN_SIDE, parallel: bool = True,
                  fonts: Optional[visualize.Typesetter] = None) -> List[str]:
    """Draw one map in the requested ``formats`` (any of ``png``, ``gif``, ``mp4``; others are
    ignored) as ``folder/<stem>.<format>``; returns the file names written, in that order.

    ``frames``: ``(T, H, W, 3)`` float in [0, 1] or uint8; ``display_map``: the normalised map
    ``(T, H, W)`` (:func:`visualize.normalize_map`); ``style``: :func:`visualize.overlay_style`;
    ``importance``: per-frame shares (:func:`visualize.frame_importance`); ``attention``: the
    model's attention per frame; ``time_steps``: the time steps of the grid the map was
    computed on (:func:`visualize.map_time_steps`), for the note on interpolated bars;
    ``animation_min_side``: animation tiles are upscaled (nearest, integer factor) to at least
    this many pixels (224 doubles 112-px clips, at ~2x the GIF time); ``parallel``: draw the
    PNG grid in a second thread while the animation is made; ``fonts``: a
    :class:`visualize.Typesetter` to share the drawn texts with other calls (one per run).
    """
    wanted = [f for f in RENDER_FORMATS if f in formats]
    if not wanted:
        return []
    frames = visualize.to_uint8(np.asarray(frames))
    overlays = visualize.overlay_uint8(frames, display_map, style)
    fonts = fonts or visualize.Typesetter()
    legend = visualize.legend_entries(style, caption.target, caption.polarity)
    note = visualize.time_note(time_steps, frames.shape[0])
    folder = Path(folder)

    def grid() -> None:
        image = visualize.render_grid_image(frames, overlays, caption.title_lines(), importance,
                                            attention, style, legend, note, fonts=fonts)
        save_png(image, folder / f"{stem}.png")

    def animations() -> None:
        pictures, layout = visualize.animation(frames, overlays, caption.header_lines(),
                                               importance, attention, style, legend, note,
                                               animation_min_side, fonts)
        if "gif" in wanted:
            save_gif(pictures, folder / f"{stem}.gif", changing=layout.changing_boxes())
        if "mp4" in wanted:
            save_mp4(pictures, folder / f"{stem}.mp4")

    animated = "gif" in wanted or "mp4" in wanted
    if "png" in wanted and animated and parallel:
        # zlib, Pillow's quantiser and encoders and numpy release the GIL: the grid is drawn
        # and compressed while the animation is made. The pool's exit waits for the grid even
        # when the animation fails, so no write outlives this call.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(grid)
            animations()
            pending.result()
    else:
        if "png" in wanted:
            grid()
        if animated:
            animations()
    return [f"{stem}.{f}" for f in wanted]


# ----------------------------------------------------------------------- methods side by side
COMPARE_COLUMNS = 8


def comparison_images(frames: np.ndarray, entries: Sequence[Tuple[str, np.ndarray, str]],
                      title_lines: Sequence[str], min_tile: int = 112,
                      fonts: Optional[visualize.Typesetter] = None):
    """One figure and one animation with a row per method, as papers show methods side by side.

    ``frames``: ``(T, H, W, 3)``; ``entries``: ``(method, display map (T, H, W), style)``.
    Returns ``(grid (h, w, 3) uint8, animation frames (T, h, w, 3) uint8)``: the grid has the frames
    (8 evenly spaced) in its first row and one row of overlays per method, each labelled; each
    animation frame shows the frame and every method's overlay at that time, left to right."""
    frames8 = visualize.to_uint8(np.asarray(frames))
    num_frames, height, width = frames8.shape[:3]
    scale = max(1, -(-min_tile // min(height, width)))
    tile_h, tile_w = height * scale, width * scale
    overlays = [visualize.overlay_uint8(frames8, display, style) for _, display, style in entries]
    names = ["clip"] + [name for name, _, _ in entries]
    font = visualize.font_for(12, fonts)
    label_w = 8 + int(max(visualize.text_width(font, n) for n in names))
    columns = np.unique(np.linspace(0, num_frames - 1, min(COMPARE_COLUMNS, num_frames))
                        .round().astype(int))
    title_h = 18 * len(title_lines) + 20
    canvas = np.full((title_h + len(names) * (tile_h + 4), label_w + len(columns) * (tile_w + 2),
                      3), 255, dtype=np.uint8)
    rows = [frames8] + overlays
    for r, images in enumerate(rows):
        y = title_h + r * (tile_h + 4)
        for c, t in enumerate(columns):
            x = label_w + c * (tile_w + 2)
            canvas[y:y + tile_h, x:x + tile_w] = visualize.upscale(images[t:t + 1], scale)[0]
    grid = canvas                              # texts are stamped onto the array in place
    for i, line in enumerate(title_lines):
        font.draw(grid, (4, 3 + 18 * i), visualize.fit_text(font, line, grid.shape[1] - 8), (0, 0, 0))
    for r, name in enumerate(names):
        font.draw(grid, (4, title_h + r * (tile_h + 4) + tile_h // 2 - 6), name, (0, 0, 0))
    for c, t in enumerate(columns):
        font.draw(grid, (label_w + c * (tile_w + 2) + 2, title_h - 14), f"t={t}", (0, 0, 0))
    header_h = 18
    strip_w = len(rows) * (tile_w + 2)
    strip_w += strip_w % 2
    animation = np.full((num_frames, header_h + tile_h + (tile_h % 2), strip_w, 3), 255,
                        dtype=np.uint8)
    for r, images in enumerate(rows):
        x = r * (tile_w + 2)
        animation[:, header_h:header_h + tile_h, x:x + tile_w] = visualize.upscale(images, scale)
    header = np.full((header_h, strip_w, 3), 255, dtype=np.uint8)
    for r, name in enumerate(names):
        font.draw(header, (r * (tile_w + 2) + 2, 2), visualize.fit_text(font, name, tile_w - 4),
                  (0, 0, 0))
    animation[:, :header_h] = header
    return grid, animation


def write_comparison(folder: Path, stem: str, formats: Sequence[str], frames: np.ndarray,
                     entries: Sequence[Tuple[str, np.ndarray, str]],
                     title_lines: Sequence[str],
                     fonts: Optional[visualize.Typesetter] = None) -> List[str]:
    """The comparison figure (PNG) and animation (GIF and/or MP4) of one clip and target."""
    wanted = [f for f in RENDER_FORMATS if f in formats]
    if not wanted or not entries:
        return []
    grid, animation = comparison_images(frames, entries, title_lines, fonts=fonts)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if "png" in wanted:
        save_png(grid, folder / f"{stem}.png")
    if "gif" in wanted:
        save_gif(animation, folder / f"{stem}.gif")
    if "mp4" in wanted:
        save_mp4(animation, folder / f"{stem}.mp4")
    return [f"{stem}.{f}" for f in wanted]
