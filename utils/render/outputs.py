"""One call per map: colour it once and write the requested formats (frame grid, animations);
the comparison figure of several methods on one clip. Every file is written by the encoder its
row of :data:`utils.render.formats.TABLE` names, so a new picture or animation format is one row
(and its encoder)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from utils.render import encoders
from utils.render import figures as visualize
from utils.render.encoders import ANIMATION_MIN_SIDE
from utils.render.formats import TABLE, OutputFormat, of_kind


def _write(row: OutputFormat, data, path: Path, **hints) -> None:
    """Write ``data`` as ``row``'s format with the encoder the row names."""
    getattr(encoders, row.encoder)(data, path, **hints)


def _names(stem: str, rows: Sequence[OutputFormat]) -> List[str]:
    """The file names of ``rows``, in the table's order."""
    return [stem + row.suffix for row in TABLE if row in rows]


def write_data(folder: Path, stem: str, formats: Sequence[str], array: np.ndarray) -> List[str]:
    """The raw map ``array`` in each requested data format (``npy``); returns the names written."""
    rows = of_kind("data", formats)
    for row in rows:
        _write(row, array, Path(folder) / f"{stem}{row.suffix}")
    return _names(stem, rows)


@dataclass(frozen=True, eq=False)
class DrawOptions:
    """What a frame grid and animation show besides the map, and how they are drawn.

    ``importance``: per-frame shares (:func:`visualize.frame_importance`); ``attention``: the
    model's attention per frame; ``time_steps``: the time steps of the grid the map was
    computed on (:func:`visualize.map_time_steps`), for the note on interpolated bars;
    ``animation_min_side``: animation tiles are upscaled (nearest, integer factor) to at least
    this many pixels (224 doubles 112-px clips, at ~2x the GIF time); ``parallel``: draw the
    grid in a second thread while the animation is made; ``fonts``: a
    :class:`visualize.Typesetter` to share the drawn texts with other calls (one per run);
    ``scores``: faithfulness curves drawn under the grid; ``texts``: a list that receives the
    texts written on the grid."""

    importance: Optional[np.ndarray] = None
    attention: Optional[np.ndarray] = None
    time_steps: Optional[int] = None
    animation_min_side: int = ANIMATION_MIN_SIDE
    parallel: bool = True
    fonts: Optional[visualize.Typesetter] = None
    scores: Sequence[visualize.ScoreCurve] = ()
    texts: Optional[List[str]] = None


def write_visuals(folder: Path, stem: str, formats: Sequence[str], frames: np.ndarray,
                  display_map: np.ndarray, style: str, caption: visualize.Caption,
                  options: DrawOptions = DrawOptions()) -> List[str]:
    """Draw one map in the requested picture and animation ``formats`` (``png``, ``gif``,
    ``mp4``; data formats and others are ignored) as ``folder/<stem>.<format>``; returns the
    file names written, in the table's order.

    ``frames``: ``(T, H, W, 3)`` float in [0, 1] or uint8; ``display_map``: the normalised map
    ``(T, H, W)`` (:func:`visualize.normalize_map`); ``style``: :func:`visualize.overlay_style`;
    ``options``: :class:`DrawOptions`. ``caption.problem``, what makes the map show nothing, is
    stamped in red on every picture.
    """
    pictures, animations = of_kind("picture", formats), of_kind("animation", formats)
    if not pictures and not animations:
        return []
    frames = visualize.to_uint8(np.asarray(frames))
    overlays = visualize.overlay_uint8(frames, display_map, style)
    fonts = options.fonts or visualize.Typesetter()
    legend = visualize.legend_entries(style, caption.target, caption.polarity)
    note = visualize.time_note(options.time_steps, frames.shape[0])
    folder = Path(folder)

    def grid() -> None:
        image = visualize.render_grid_image(frames, overlays, caption.title_lines(),
                                            options.importance, options.attention, style, legend,
                                            note, fonts=fonts, alert=caption.problem,
                                            scores=options.scores, texts=options.texts)
        for row in pictures:
            _write(row, image, folder / f"{stem}{row.suffix}")

    def animate() -> None:
        shown, layout = visualize.animation(frames, overlays, caption.header_lines(),
                                            options.importance, options.attention, style, legend,
                                            note, options.animation_min_side, fonts,
                                            caption.problem)
        changing = layout.changing_boxes()
        for row in animations:
            _write(row, shown, folder / f"{stem}{row.suffix}", changing=changing)

    if pictures and animations and options.parallel:
        # zlib, Pillow's quantiser and encoders and numpy release the GIL: the grid is drawn
        # and compressed while the animation is made. The pool's exit waits for the grid even
        # when the animation fails, so no write outlives this call.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(grid)
            animate()
            pending.result()
    else:
        if pictures:
            grid()
        if animations:
            animate()
    return _names(stem, pictures + animations)


# ----------------------------------------------------------------------- methods side by side
COMPARE_COLUMNS = 8
_LINE_H, _BAR_W, _BAR_TEXT, _HEADER_H = 16, 12, 30, 18


@dataclass(frozen=True, eq=False)
class _CompareLayout:
    """Where the comparison grid's parts lie: ``names``: the row names (the clip, then each
    method); ``legends``: per method, its legend items and its problem; ``row_heads``: the text
    lines above each method's row; ``wrapped``: the title lines as drawn."""

    font: object
    names: List[str]
    styles: List[visualize.Style]
    legends: List[tuple]
    row_heads: List[int]
    wrapped: List[str]
    scale: int
    tile_h: int
    tile_w: int
    label_w: int
    grid_w: int
    width_all: int
    title_h: int
    block_h: int


def _compare_layout(shape: Tuple[int, ...], entries: Sequence[tuple], styles, title_lines,
                    min_tile: int, font, target: str, polarity: str) -> _CompareLayout:
    """The geometry of the comparison grid for frames of ``shape`` ``(T, H, W, 3)``."""
    num_frames, height, width = shape[:3]
    scale = max(1, -(-min_tile // min(height, width)))
    tile_h, tile_w = height * scale, width * scale
    names = ["clip"] + [name for name, _, _, _ in entries]
    label_w = 8 + int(max(visualize.text_width(font, n) for n in names))
    columns = min(COMPARE_COLUMNS, num_frames)
    grid_w = label_w + columns * (tile_w + 2)
    width_all = grid_w + 6 + _BAR_W + 4 + _BAR_TEXT
    wrapped = [visualize.fit_text(font, line, width_all - 8) for line in title_lines]
    legends = []
    for (name, _, _, problem), style in zip(entries, styles):
        words = visualize.legend_entries(style, target, polarity)
        items, _ = visualize.flow_legend(font, words, label_w, 0, width_all - label_w - 4, 11,
                                         _LINE_H)
        legends.append((items, problem))
    row_heads = [(1 + max(y for *_, y in items) // _LINE_H if items else 0) + (1 if problem else 0)
                 for items, problem in legends]
    title_h = _LINE_H * len(wrapped) + 8
    block_h = _LINE_H + tile_h + 4 + sum(head * _LINE_H + tile_h + 4 for head in row_heads)
    return _CompareLayout(font, names, styles, legends, row_heads, wrapped, scale, tile_h, tile_w,
                          label_w, grid_w, width_all, title_h, block_h)


def _paint_compare_grid(layout: _CompareLayout, rows: Sequence[np.ndarray]):
    """The comparison grid's tiles, legend swatches and colour bars on a white canvas, and the
    texts to stamp on it, ``(kind, index, x, y)``. ``rows``: the frames, then each overlay."""
    num_frames = rows[0].shape[0]
    blocks = -(-num_frames // COMPARE_COLUMNS)
    tile_h, tile_w = layout.tile_h, layout.tile_w
    canvas = np.full((layout.title_h + blocks * layout.block_h, layout.width_all, 3), 255,
                     dtype=np.uint8)
    placed = []                                    # (kind, index, x, y): texts to draw later
    y = layout.title_h
    for block in range(blocks):
        shown = range(block * COMPARE_COLUMNS, min(num_frames, (block + 1) * COMPARE_COLUMNS))
        for c, t in enumerate(shown):
            placed.append(("t", t, layout.label_w + c * (tile_w + 2) + 2, y + 2))
        y += _LINE_H
        for r, images in enumerate(rows):
            if r > 0:
                items, problem = layout.legends[r - 1]
                for colour, _, x, item_y in items:
                    canvas[y + item_y + 2:y + item_y + 13, x:x + 11] = colour
                placed.append(("legend", r - 1, 0, y))
                y += layout.row_heads[r - 1] * _LINE_H
            for c, t in enumerate(shown):
                x = layout.label_w + c * (tile_w + 2)
                canvas[y:y + tile_h, x:x + tile_w] = visualize.upscale(images[t:t + 1],
                                                                       layout.scale)[0]
            placed.append(("name", r, 4, y + tile_h // 2 - 6))
            if r > 0:
                bar = (layout.grid_w + 6, y, layout.grid_w + 6 + _BAR_W, y + tile_h)
                visualize.paint_colour_bar(canvas, bar, layout.styles[r - 1])
                placed.append(("bar", r - 1, bar, 0))
            y += tile_h + 4
    return canvas, placed


def _stamp_compare_texts(grid: np.ndarray, layout: _CompareLayout, placed: Sequence[tuple]) -> None:
    """The title, frame numbers, row names, legends, problems and colour bar ticks, stamped
    onto ``grid`` in place in the order they were placed."""
    font, label_w, width_all = layout.font, layout.label_w, layout.width_all
    for i, line in enumerate(layout.wrapped):
        font.draw(grid, (4, 3 + _LINE_H * i), line, (0, 0, 0))
    for kind, index, x, y in placed:
        if kind == "t":
            font.draw(grid, (x, y), f"t={index}", visualize.GREY_TEXT)
        elif kind == "name":
            font.draw(grid, (x, y), layout.names[index], (0, 0, 0))
        elif kind == "legend":
            items, problem = layout.legends[index]
            for _, text, item_x, item_y in items:
                font.draw(grid, (item_x + 15, y + item_y), text, (0, 0, 0))
            if problem:
                lines = layout.row_heads[index] - 1
                font.draw(grid, (label_w, y + lines * _LINE_H),
                          visualize.fit_text(font, problem, width_all - label_w - 4),
                          visualize.ALERT_COLOUR)
        else:
            style = layout.styles[index]
            for value, text in visualize.colour_bar_ticks(style):
                tick = visualize.tick_y(x, style, value)
                grid[tick:tick + 1, x[2]:x[2] + 4] = 0
                font.draw(grid, (x[2] + 5, tick - 7), text, (0, 0, 0))


def _compare_animation(layout: _CompareLayout, rows: Sequence[np.ndarray],
                       fonts: Optional[visualize.Typesetter]) -> np.ndarray:
    """The comparison animation: per frame, the frame and each overlay left to right under a
    header of their names (even sides, for H.264)."""
    tile_h, tile_w = layout.tile_h, layout.tile_w
    strip_w = len(layout.names) * (tile_w + 2)
    strip_w += strip_w % 2
    animation = np.full((rows[0].shape[0], _HEADER_H + tile_h + (tile_h % 2), strip_w, 3), 255,
                        dtype=np.uint8)
    for r, images in enumerate(rows):
        x = r * (tile_w + 2)
        animation[:, _HEADER_H:_HEADER_H + tile_h, x:x + tile_w] = visualize.upscale(images,
                                                                                 layout.scale)
    header = np.full((_HEADER_H, strip_w, 3), 255, dtype=np.uint8)
    plain = visualize.font_for(12, fonts)
    for r, name in enumerate(layout.names):
        plain.draw(header, (r * (tile_w + 2) + 2, 2), visualize.fit_text(plain, name, tile_w - 4),
                   (0, 0, 0))
    animation[:, :_HEADER_H] = header
    return animation


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
    entries = [tuple(e) + (None,) * (4 - len(e)) for e in entries]
    styles = [visualize.as_style(style) for _, _, style, _ in entries]
    overlays = [visualize.overlay_uint8(frames8, display, style)
                for (_, display, _, _), style in zip(entries, styles)]
    font = visualize.logged(visualize.font_for(12, fonts), texts)
    layout = _compare_layout(frames8.shape, entries, styles, title_lines, min_tile, font, target,
                             polarity)
    rows = [frames8] + overlays
    grid, placed = _paint_compare_grid(layout, rows)
    _stamp_compare_texts(grid, layout, placed)     # texts are stamped onto the array in place
    return grid, _compare_animation(layout, rows, fonts)


def write_comparison(folder: Path, stem: str, formats: Sequence[str], frames: np.ndarray,
                     entries: Sequence[Tuple[str, np.ndarray, str]],
                     title_lines: Sequence[str],
                     fonts: Optional[visualize.Typesetter] = None, target: str = "",
                     polarity: str = "positive") -> List[str]:
    """The comparison figure and animation of one clip and target in each requested picture
    and animation format (PNG; GIF and/or MP4)."""
    pictures, animations = of_kind("picture", formats), of_kind("animation", formats)
    if not (pictures or animations) or not entries:
        return []
    grid, animation = comparison_images(frames, entries, title_lines, fonts=fonts,
                                        target=target, polarity=polarity)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for row in pictures:
        _write(row, grid, folder / f"{stem}{row.suffix}")
    for row in animations:
        _write(row, animation, folder / f"{stem}{row.suffix}", changing=None)
    return _names(stem, pictures + animations)
