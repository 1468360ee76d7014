"""The views' pictures: what :mod:`vis_methods.views` computed, drawn with a title naming the
model, the layer and (where there is one) the class, axis labels and units.

Every function returns a :class:`Drawing`: the picture (an RGB ``(H, W, 3)`` uint8 array, a
list of them for an animation, or a matplotlib figure) and every text drawn on it, so that a
caller (or a test) can read what the picture says. Nothing here writes a file; the encoders do.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from utils.render import figures

Picture = Union[np.ndarray, List[np.ndarray], Figure]

GRID_COLUMNS = 8          # frames shown per row
FILTER_TILE_MIN = 28      # a kernel slice is drawn at least this many pixels wide
FILTER_GAP = 2            # pixels between the time slices of one kernel
FILTER_BORDER = 6         # pixels between kernels and around the grid
FILTER_BACKGROUND = 255   # white background between kernels
STAMP_SIZE = 11           # font size of texts stamped on arrays
LINE = 15                 # line height of those texts
MARGIN = 8
MIN_WIDTH = 600           # stamped pictures are at least this wide, so their titles fit
THUMBNAIL_SIDE = 40
CLASS_MODEL_MIN_SIDE = 224


@dataclass
class Drawing:
    """A view's picture and the texts drawn on it (titles, labels, legends, tick labels set by
    the drawing). ``offset``: where named parts sit in an array picture, ``(top, left)``."""

    picture: Picture
    texts: List[str]
    offset: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    def says(self, text: str) -> bool:
        """Whether one of the drawn texts contains ``text``."""
        return any(text in t for t in self.texts)


def readable(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (a file name's undecodable bytes, which Python keeps
    as lone surrogates) written as backslash escapes: ``b'clip-\\xff'`` -> ``clip-\\xff``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(text).decode("utf-8", errors="backslashreplace")
    except UnicodeError:
        return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _figure_texts(figure: Figure) -> List[str]:
    return [t.get_text() for t in figure.findobj(Text) if t.get_text()]


def _short(name: str, limit: int = 28) -> str:
    name = readable(name)
    return name if len(name) <= limit else f"{name[:12]}…{name[-(limit - 13):]}"


def _subsample(count: int, columns: int = GRID_COLUMNS) -> np.ndarray:
    """Up to ``columns`` indices spread evenly over ``range(count)``, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(columns, count)).round().astype(int))


class _Stamper:
    """Texts stamped on an array picture, each one recorded."""

    def __init__(self, size: int = STAMP_SIZE):
        self.font = figures.font_for(size)
        self.texts: List[str] = []

    def width(self, text: str) -> int:
        return int(math.ceil(figures.text_width(self.font, text)))

    def fit(self, text: str, width: int) -> str:
        return figures.fit_text(self.font, text, width)

    def draw(self, canvas: np.ndarray, x: int, y: int, text: str,
             colour: figures.Colour = figures.BLACK) -> None:
        self.font.draw(canvas, (x, y), text, colour)
        self.texts.append(text)


def _with_header(body: np.ndarray, lines: Sequence[str], stamper: _Stamper,
                 left: int = 0) -> Tuple[np.ndarray, int]:
    """``body`` under ``lines`` of text (the first one is the title), on white, at least
    :data:`MIN_WIDTH` wide; returns the picture and the row where the body starts."""
    width = max(MIN_WIDTH, body.shape[1] + left)
    top = MARGIN + LINE * len(lines) + MARGIN // 2
    canvas = np.full((top + body.shape[0], width, 3), 255, dtype=np.uint8)
    for number, line in enumerate(lines):
        stamper.draw(canvas, MARGIN, MARGIN + number * LINE,
                     stamper.fit(line, width - 2 * MARGIN),
                     figures.BLACK if number == 0 else figures.GREY_TEXT)
    canvas[top:, left:left + body.shape[1]] = body
    return canvas, top


# ----------------------------------------------------------------------------- filters
def filter_grid_layout(num_kernels: int, time_slices: int, kernel_height: int,
                       kernel_width: int) -> dict:
    """Where :func:`filters_picture` draws each kernel on its sheet.

    Returns ``columns`` (kernels per row), ``scale`` (screen pixels per kernel pixel),
    ``tile`` (height, width) of one kernel, ``size`` of the sheet and ``origin(rank) ->
    (row, col)`` of the top-left sheet pixel of the kernel drawn at position ``rank``. Slice
    ``s`` of that kernel starts ``s * (kernel_width * scale + FILTER_GAP)`` pixels to its right.
    """
    scale = max(1, math.ceil(FILTER_TILE_MIN / max(kernel_height, kernel_width)))
    tile_h = kernel_height * scale
    tile_w = time_slices * kernel_width * scale + (time_slices - 1) * FILTER_GAP
    columns = max(1, min(num_kernels, round(math.sqrt(num_kernels * tile_h / tile_w * 1.6))))

    def origin(rank: int) -> Tuple[int, int]:
        row, col = divmod(rank, columns)
        return (FILTER_BORDER + row * (tile_h + FILTER_BORDER),
                FILTER_BORDER + col * (tile_w + FILTER_BORDER))

    rows = -(-num_kernels // columns)
    size = (FILTER_BORDER + rows * (tile_h + FILTER_BORDER),
            FILTER_BORDER + columns * (tile_w + FILTER_BORDER))
    return {"columns": columns, "scale": scale, "tile": (tile_h, tile_w), "origin": origin,
            "size": size, "rows": rows}


def filters_picture(result, model: str) -> Drawing:
    """The kernels of a :class:`~vis_methods.views.inside.Filters` in reading order, largest
    L2 norm first, each kernel's time slices side by side; a title naming the layer and the
    model, the reading order, the colour scale and the norms; each row labelled with the rank
    of its first kernel. ``offset["sheet"]``: where the kernel sheet (:func:`filter_grid_layout`)
    sits in the picture."""
    tiles = result.tiles
    count, slices, kernel_h, kernel_w = tiles.shape[:4]
    layout = filter_grid_layout(count, slices, kernel_h, kernel_w)
    scale = layout["scale"]
    sheet = np.full(layout["size"] + (3,), FILTER_BACKGROUND, dtype=np.uint8)
    pixels = (tiles * 255).round().astype(np.uint8)
    for rank in range(count):
        top, left = layout["origin"](rank)
        for s in range(slices):
            block = pixels[rank, s].repeat(scale, axis=0).repeat(scale, axis=1)
            x = left + s * (kernel_w * scale + FILTER_GAP)
            sheet[top:top + block.shape[0], x:x + block.shape[1]] = block
    stamper = _Stamper()
    c_in, t, k_h, k_w = result.kernel_shape
    colours = "RGB" if c_in == 3 else ("grey" if c_in == 1 else f"grey (mean of {c_in} inputs)")
    slices_text = "one time slice" if t == 1 else f"time slices t = 0..{t - 1} left to right"
    lines = [f"filters of {result.layer}   model: {model}",
             f"{count} kernels of {c_in} x {t} x {k_h} x {k_w} (inputs x time x height x width), "
             "largest L2 norm first, in reading order",
             f"each kernel: {slices_text}; colour ({colours}) over its own min..max",
             f"1 weight = {scale} x {scale} px; L2 norm of the weights {result.norms[0]:.3g} (#1) "
             f"down to {result.norms[-1]:.3g} (#{count}), all in filters.csv"]
    label_width = stamper.width(f"#{count}") + 2 * MARGIN
    picture, top = _with_header(sheet, lines, stamper, left=label_width)
    for row in range(layout["rows"]):
        rank = row * layout["columns"]
        y = top + layout["origin"](rank)[0] + max(0, (layout["tile"][0] - LINE) // 2)
        stamper.draw(picture, MARGIN, y, f"#{rank + 1}", figures.GREY_TEXT)
    return Drawing(picture, stamper.texts, {"sheet": (top, label_width)})


# ------------------------------------------------------------------------- activations
def activations_figure(result, model: str, clip: str, label: Optional[str] = None) -> Drawing:
    """One row per channel of an :class:`~vis_methods.views.inside.Activations` over the clip's
    frames (subsampled to 8) under a row of the plain frames; each row names its channel and
    mean activation; the title names the clip, its label, the layer and the model."""
    k = len(result.channels)
    frames = result.frames
    columns = _subsample(frames.shape[0])
    height = (k + 1) * 1.3 + 1.2
    figure = Figure(figsize=(len(columns) * 1.3 + 1.1, height))
    grid = figure.add_gridspec(k + 1, len(columns), hspace=0.08, wspace=0.04, left=0.1,
                               right=0.99, bottom=0.45 / height, top=1 - 0.85 / height)
    for row in range(k + 1):
        for col, t in enumerate(columns):
            axis = figure.add_subplot(grid[row, col])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.imshow(frames[t])
                axis.set_title(f"t={t}", fontsize=7, pad=2)
            else:
                axis.imshow(figures.overlay(frames[t], result.display[row - 1, t], "jet"))
            if col == 0:
                text = ("frames" if row == 0 else
                        f"ch {int(result.channels[row - 1])}\n"
                        f"mean {float(result.means[row - 1]):.3g}")
                axis.set_ylabel(text, fontsize=7)
    figure.suptitle(f"{_short(clip, 60)} (label: {label or 'unknown'})\n"
                    f"top {k} channels of {result.layer} by mean activation   model: {model}",
                    fontsize=8)
    figure.text(0.5, 0.12 / height, "frame t (input frames)   colour: the channel's activation "
                "over its own maximum in the clip (positive part), jet colours: 0 clear .. 1 red",
                ha="center", fontsize=7)
    return Drawing(figure, _figure_texts(figure))


# --------------------------------------------------------------------------- top clips
def top_clips_figures(result, model: str) -> Dict[int, Drawing]:
    """Per channel of a :class:`~vis_methods.views.inside.TopClips`, the best clips' crops of
    the peak cell's input region, each row naming rank, value and clip; titled with the
    channel, the layer and the model."""
    drawings = {}
    table = result.table
    for channel in result.channels:
        rows = [i for i in range(len(table)) if int(table["channel"].iloc[i]) == channel]
        crop_frames = max(len(result.times[i]) for i in rows)
        height = len(rows) * 1.5 + 1.1
        figure = Figure(figsize=(crop_frames * 1.4 + 1.8, height))
        grid = figure.add_gridspec(len(rows), crop_frames, hspace=0.3, wspace=0.04, left=0.24,
                                   right=0.99, bottom=0.4 / height, top=1 - 0.7 / height)
        for row, index in enumerate(rows):
            entry = table.iloc[index]
            for col in range(crop_frames):
                axis = figure.add_subplot(grid[row, col])
                axis.set_xticks([])
                axis.set_yticks([])
                if col < len(result.times[index]):
                    axis.imshow(result.crops[index][col], interpolation="nearest")
                    axis.set_title(f"t={int(result.times[index][col])}", fontsize=6, pad=1)
                else:
                    axis.set_axis_off()
                if col == 0:
                    axis.set_ylabel(f"#{int(entry['rank'])}  {float(entry['value']):.3g}\n"
                                    f"{_short(str(entry['clip']))}", fontsize=6, rotation=0,
                                    ha="right", va="center")
        figure.suptitle(f"channel {channel} of {result.layer} ({result.num_channels} channels)   "
                        f"model: {model}\nclips with the strongest response: crops of the peak "
                        "cell's input region", fontsize=8)
        figure.text(0.5, 0.1 / height, "rows: rank, the channel's peak activation, clip;   "
                    "t: input frame", ha="center", fontsize=6)
        drawings[channel] = Drawing(figure, _figure_texts(figure))
    return drawings


# --------------------------------------------------------------------------- embedding
def _thumbnail(frame: np.ndarray) -> np.ndarray:
    image = Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8))
    scale = THUMBNAIL_SIDE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.BILINEAR)
    return np.asarray(image)


def embedding_figures(result, model: str) -> Dict[str, Drawing]:
    """Per projection of an :class:`~vis_methods.views.inside.Embedding` (``pca``, ``tsne``),
    a scatter coloured by label with each clip's middle frame and a legend of the labels;
    titled with the projection, where the features come from and the model."""
    from matplotlib.lines import Line2D
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    classes = list(dict.fromkeys(result.labels))
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    colours = {c: palette(i % palette.N) for i, c in enumerate(classes)}
    thumbnails = [_thumbnail(f) for f in result.middle_frames]
    drawings = {}
    for name in ("pca", "tsne"):
        coords = getattr(result, name)
        if coords is None:
            continue
        axis_name = "PCA" if name == "pca" else "t-SNE"
        figure = Figure(figsize=(7.5, 6.8))
        axis = figure.add_subplot(1, 1, 1)
        axis.scatter(coords[:, 0], coords[:, 1], c=[colours[c] for c in result.labels], s=30,
                     zorder=1)
        for (x, y), label, thumb in zip(coords, result.labels, thumbnails):
            box = AnnotationBbox(OffsetImage(thumb, zoom=1.0), (x, y), frameon=True, pad=0.15,
                                 bboxprops={"edgecolor": colours[label], "linewidth": 2})
            axis.add_artist(box)
        span = np.ptp(coords, axis=0)
        span = np.where(span > 0, span, 1.0)
        axis.set_xlim(coords[:, 0].min() - 0.12 * span[0], coords[:, 0].max() + 0.12 * span[0])
        axis.set_ylim(coords[:, 1].min() - 0.12 * span[1], coords[:, 1].max() + 0.12 * span[1])
        handles = [Line2D([], [], marker="s", linestyle="", markersize=8, color=colours[c],
                          label=_short(c, 40)) for c in classes]
        axis.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8, title="label",
                    title_fontsize=7)
        axis.set_title(f"{axis_name} of {result.source}, {len(result.names)} clips\n"
                       f"model: {model}", fontsize=9)
        if name == "pca" and result.pca_explained is not None:
            ratios = result.pca_explained
            axis.set_xlabel(f"PCA 1 ({ratios[0]:.0%} of the variance; feature units)", fontsize=8)
            axis.set_ylabel(f"PCA 2 ({ratios[1]:.0%} of the variance; feature units)", fontsize=8)
        else:
            axis.set_xlabel(f"{axis_name} 1 (no unit: only neighbours are meaningful)",
                            fontsize=8)
            axis.set_ylabel(f"{axis_name} 2", fontsize=8)
        drawings[name] = Drawing(figure, _figure_texts(figure))
    return drawings


# ------------------------------------------------------------------------- class model
def _class_model_frames(video) -> np.ndarray:
    frames = video.permute(1, 2, 3, 0).numpy()  # (T, H, W, C)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return (np.clip(frames[..., :3], 0, 1) * 255).round().astype(np.uint8)


def class_model_pictures(result, model: str, class_name: str) -> Tuple[Drawing, Drawing]:
    """A :class:`~vis_methods.views.inside.ClassModel` as ``(sheet, animation)``: the frames
    side by side (8 per row, each labelled ``t=``) and the frames upscaled to at least 224 px
    as an animation, both under a title naming the class, the model and the probability."""
    frames = _class_model_frames(result.video)
    count, height, width = frames.shape[:3]
    title = f"class model of {class_name!r} (class {result.target_class})   model: {model}"
    facts = (f"p({class_name}) = {result.probability:.3f} after {result.num_iter} steps from "
             "a grey video")
    stamper = _Stamper()
    columns = min(GRID_COLUMNS, count)
    rows = -(-count // columns)
    cell_h = height + LINE + 2
    body = np.full((rows * cell_h, columns * (width + 2), 3), 255, dtype=np.uint8)
    for t, frame in enumerate(frames):
        r, c = divmod(t, columns)
        y, x = r * cell_h, c * (width + 2)
        stamper.draw(body, x, y, f"t={t}", figures.GREY_TEXT)
        body[y + LINE:y + LINE + height, x:x + width] = frame
    lines = [title, facts, f"frames t = 0..{count - 1} (input frames), left to right, top to "
             f"bottom; pixel values in [0, 1] shown as RGB"]
    sheet, top = _with_header(body, lines, stamper)
    sheet_drawing = Drawing(sheet, stamper.texts, {"frames": (top + LINE, 0)})

    scale = max(1, math.ceil(CLASS_MODEL_MIN_SIDE / min(height, width)))
    big = figures.upscale(frames, scale)
    animator = _Stamper(10)
    header = 3 * 13 + 6
    pictures = []
    for t in range(count):
        canvas = np.full((header + big.shape[1], big.shape[2], 3), 255, dtype=np.uint8)
        canvas[header:] = big[t]
        texts = [animator.fit(f"class model: {class_name}", big.shape[2] - 8),
                 animator.fit(f"model: {model}   p = {result.probability:.2f}", big.shape[2] - 8),
                 f"frame t = {t} / {count - 1}"]
        for number, text in enumerate(texts):
            animator.draw(canvas, 4, 3 + 13 * number, text,
                          figures.BLACK if number == 0 else figures.GREY_TEXT)
        pictures.append(canvas)
    return sheet_drawing, Drawing(pictures, list(dict.fromkeys(animator.texts)),
                                  {"frames": (header, 0)})


# ---------------------------------------------------------------- temporal sensitivity
def class_text(index: int, class_names: Sequence[str]) -> str:
    """A class's name, or ``class <index>`` without one."""
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


def temporal_figure(result: Mapping, clip: str, model: str,
                    class_names: Sequence[str] = ()) -> Drawing:
    """A bar per condition of a temporal-sensitivity result (the target's softmax probability),
    the original's level as a dashed line, each bar's predicted class when it is not the
    target, and the verdict, the clip, the class and the model in the title."""
    names = list(result["probabilities"])
    values = [float(result["probabilities"][n]) for n in names]
    target = int(result["target_class"])
    target_name = class_text(target, class_names)
    colours = ["tab:gray" if n == "original" else "tab:blue" if n.startswith("segment_")
               else "tab:orange" for n in names]
    figure = Figure(figsize=(max(6.0, 0.65 * len(names) + 1.8), 4.0))
    axis = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(names))
    axis.bar(positions, values, color=colours, width=0.7)
    axis.axhline(values[0], color="black", linewidth=0.8, linestyle="--")
    for x, name, value in zip(positions, names, values):
        predicted = int(result["predictions"][name])
        if predicted != target:
            axis.text(x, value + 0.02, f"predicted: {_short(class_text(predicted, class_names), 30)}",
                      ha="center", va="bottom", rotation=90, fontsize=6.5, color="dimgray")
    axis.set_xticks(positions)
    axis.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
    axis.set_ylim(0.0, 1.0)
    axis.set_ylabel(f"p({_short(target_name, 32)}) (softmax probability)", fontsize=8)
    axis.set_xlabel("condition (frames of the clip disturbed; dashed: the original's level)",
                    fontsize=7)
    axis.tick_params(axis="y", labelsize=7)
    axis.set_title(f"{_short(clip, 48)}: {result['verdict']}\nclass: {target_name}   "
                   f"model: {model}", fontsize=9)
    figure.tight_layout()
    return Drawing(figure, _figure_texts(figure))
