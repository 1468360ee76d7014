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
                  fonts: Optional[visualize.Typesetter] = None,
                  scores: Sequence[visualize.ScoreCurve] = (),
                  texts: Optional[List[str]] = None) -> List[str]:
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
    :class:`visualize.Typesetter` to share the drawn texts with other calls (one per run);
    ``scores``: faithfulness curves drawn under the grid; ``texts``: a list that receives the
    texts written on the grid (``caption.problem``, what makes the map show nothing, is stamped
    in red on every picture).
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
                                            attention, style, legend, note, fonts=fonts,
                                            alert=caption.problem, scores=scores, texts=texts)
        save_png(image, folder / f"{stem}.png")

    def animations() -> None:
        pictures, layout = visualize.animation(frames, overlays, caption.header_lines(),
                                               importance, attention, style, legend, note,
                                               animation_min_side, fonts, caption.problem)
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


def comparison_images(frames: np.ndarray, entries: Sequence[tuple],
                      title_lines: Sequence[str], min_tile: int = 112,
                      fonts: Optional[visualize.Typesetter] = None, target: str = "",
                      polarity: str = "positive", texts: Optional[List[str]] = None):
    """One figure and one animation with a row per method, as papers show methods side by side.

    ``frames``: ``(T, H, W, 3)``; ``entries``: ``(method, display map (T, H, W), style)`` or
    ``(method, display map, style, problem)`` (``problem``: what makes the map show nothing,
    stamped in red on its row). Returns ``(grid (h, w, 3) uint8, animation frames (T, h, w, 3)
    uint8)``: the grid shows every frame, 8 per block; each block has a row of frames and one
    row of overlays per method, each row with its name, its legend (``target``, ``polarity``)
    and its colour bar; each animation frame shows the frame and every method's overlay at that
    time, left to right. ``texts``: a list that receives every text written on the grid."""
    frames8 = visualize.to_uint8(np.asarray(frames))
    num_frames, height, width = frames8.shape[:3]
    scale = max(1, -(-min_tile // min(height, width)))
    tile_h, tile_w = height * scale, width * scale
    entries = [tuple(e) + (None,) * (4 - len(e)) for e in entries]
    styles = [visualize.as_style(style) for _, _, style, _ in entries]
    overlays = [visualize.overlay_uint8(frames8, display, style)
                for (_, display, _, _), style in zip(entries, styles)]
    names = ["clip"] + [name for name, _, _, _ in entries]
    font = visualize.logged(visualize.font_for(12, fonts), texts)
    label_w = 8 + int(max(visualize.text_width(font, n) for n in names))
    columns = min(COMPARE_COLUMNS, num_frames)
    blocks = -(-num_frames // COMPARE_COLUMNS)
    bar_w, bar_text = 12, 30
    grid_w = label_w + columns * (tile_w + 2)
    width_all = grid_w + 6 + bar_w + 4 + bar_text
    line_h = 16
    wrapped = [visualize.fit_text(font, line, width_all - 8) for line in title_lines]
    legends = []
    for (name, _, _, problem), style in zip(entries, styles):
        words = visualize.legend_entries(style, target, polarity)
        items, _ = visualize.flow_legend(font, words, label_w, 0, width_all - label_w - 4, 11,
                                         line_h)
        legends.append((items, problem))
    row_heads = [(1 + max(y for *_, y in items) // line_h if items else 0) + (1 if problem else 0)
                 for items, problem in legends]
    title_h = line_h * len(wrapped) + 8
    block_h = line_h + tile_h + 4 + sum(head * line_h + tile_h + 4 for head in row_heads)
    canvas = np.full((title_h + blocks * block_h, width_all, 3), 255, dtype=np.uint8)
    placed = []                                    # (kind, index, x, y): texts to draw later
    y = title_h
    for block in range(blocks):
        shown = range(block * COMPARE_COLUMNS, min(num_frames, (block + 1) * COMPARE_COLUMNS))
        for c, t in enumerate(shown):
            placed.append(("t", t, label_w + c * (tile_w + 2) + 2, y + 2))
        y += line_h
        for r, images in enumerate([frames8] + overlays):
            if r > 0:
                items, problem = legends[r - 1]
                for colour, _, x, item_y in items:
                    canvas[y + item_y + 2:y + item_y + 13, x:x + 11] = colour
                placed.append(("legend", r - 1, 0, y))
                y += row_heads[r - 1] * line_h
            for c, t in enumerate(shown):
                x = label_w + c * (tile_w + 2)
                canvas[y:y + tile_h, x:x + tile_w] = visualize.upscale(images[t:t + 1], scale)[0]
            placed.append(("name", r, 4, y + tile_h // 2 - 6))
            if r > 0:
                bar = (grid_w + 6, y, grid_w + 6 + bar_w, y + tile_h)
                visualize.paint_colour_bar(canvas, bar, styles[r - 1])
                placed.append(("bar", r - 1, bar, 0))
            y += tile_h + 4
    grid = canvas                              # texts are stamped onto the array in place
    for i, line in enumerate(wrapped):
        font.draw(grid, (4, 3 + line_h * i), line, (0, 0, 0))
    for kind, index, x, y in placed:
        if kind == "t":
            font.draw(grid, (x, y), f"t={index}", visualize.GREY_TEXT)
        elif kind == "name":
            font.draw(grid, (x, y), names[index], (0, 0, 0))
        elif kind == "legend":
            items, problem = legends[index]
            for _, text, item_x, item_y in items:
                font.draw(grid, (item_x + 15, y + item_y), text, (0, 0, 0))
            if problem:
                lines = row_heads[index] - 1
                font.draw(grid, (label_w, y + lines * line_h),
                          visualize.fit_text(font, problem, width_all - label_w - 4),
                          visualize.ALERT_COLOUR)
        else:
            for value, text in visualize.colour_bar_ticks(styles[index]):
                tick = visualize.tick_y(x, styles[index], value)
                grid[tick:tick + 1, x[2]:x[2] + 4] = 0
                font.draw(grid, (x[2] + 5, tick - 7), text, (0, 0, 0))
    header_h = 18
    strip_w = len(names) * (tile_w + 2)
    strip_w += strip_w % 2
    animation = np.full((num_frames, header_h + tile_h + (tile_h % 2), strip_w, 3), 255,
                        dtype=np.uint8)
    for r, images in enumerate([frames8] + overlays):
        x = r * (tile_w + 2)
        animation[:, header_h:header_h + tile_h, x:x + tile_w] = visualize.upscale(images, scale)
    header = np.full((header_h, strip_w, 3), 255, dtype=np.uint8)
    plain = visualize.font_for(12, fonts)
    for r, name in enumerate(names):
        plain.draw(header, (r * (tile_w + 2) + 2, 2), visualize.fit_text(plain, name, tile_w - 4),
                   (0, 0, 0))
    animation[:, :header_h] = header
    return grid, animation


def write_comparison(folder: Path, stem: str, formats: Sequence[str], frames: np.ndarray,
                     entries: Sequence[Tuple[str, np.ndarray, str]],
                     title_lines: Sequence[str],
                     fonts: Optional[visualize.Typesetter] = None, target: str = "",
                     polarity: str = "positive") -> List[str]:
    """The comparison figure (PNG) and animation (GIF and/or MP4) of one clip and target."""
    wanted = [f for f in RENDER_FORMATS if f in formats]
    if not wanted or not entries:
        return []
    grid, animation = comparison_images(frames, entries, title_lines, fonts=fonts,
                                        target=target, polarity=polarity)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if "png" in wanted:
        save_png(grid, folder / f"{stem}.png")
    if "gif" in wanted:
        save_gif(animation, folder / f"{stem}.gif")
    if "mp4" in wanted:
        save_mp4(animation, folder / f"{stem}.mp4")
    return [f"{stem}.{f}" for f in wanted]
