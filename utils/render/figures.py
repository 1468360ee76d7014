"""From raw attributions to pictures: channel reduction, polarity, robust normalisation,
colour overlays, the frame grid (PNG) and the animation frames (GIF, MP4).

Maps here are per clip: ``(T, H, W)`` numpy arrays; frames are RGB ``(T, H, W, 3)``, float in
[0, 1] or uint8. Pictures are composed with numpy and Pillow (one canvas per clip, text drawn
with Pillow's bundled font); the 256 colours of each colour map are matplotlib's, read from
``colour_maps.npz`` (``python -m utils.render.make_colour_tables``) without importing it.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass
from types import MappingProxyType
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

POLARITIES = ("positive", "negative", "both")
from utils.render.formats import COLORMAPS, DIVERGING_MAPS, NORMALIZATIONS, SEQUENTIAL_MAPS  # noqa: E402,F401
DEFAULT_SEQUENTIAL, DEFAULT_DIVERGING = "inferno", "RdBu_r"
STYLES = COLORMAPS + ("diverging",)          # a style name: a colour map, or the signed default
# A map whose spread (max - min) is at most this fraction of its largest magnitude is drawn as
# constant: scaling it up would paint noise as evidence.
DEGENERATE_FRACTION = 1e-2
GRID_COLUMNS = 8
LUT_SIZE = 256

Colour = Tuple[int, int, int]
Box = Tuple[int, int, int, int]             # x0, y0, x1, y1 (x1, y1 exclusive)

WHITE: Colour = (255, 255, 255)
BLACK: Colour = (0, 0, 0)
GREY_TEXT: Colour = (80, 80, 80)
ALERT_COLOUR: Colour = (200, 0, 0)            # what is wrong with a map, above the pictures
IMPORTANCE_COLOUR: Colour = (255, 127, 14)    # orange bars: the map's share per frame
ATTENTION_COLOUR: Colour = (31, 119, 180)     # blue bars: the model's temporal attention
CURSOR_COLOUR: Colour = (20, 20, 20)
MAP_CURVE_COLOUR: Colour = (214, 39, 40)      # score curves: the map's (red) against random (grey)
RANDOM_CURVE_COLOUR: Colour = (140, 140, 140)
BAR_BACKGROUND = 0.5                          # colour bars show the overlay on mid-grey

# Words for the colours of each map: (strongest, half as strong) for sequential maps,
# (for, against) for diverging ones.
COLOUR_WORDS = MappingProxyType({
    "inferno": ("pale yellow", "red"), "magma": ("cream", "pink"), "viridis": ("yellow", "teal"),
    "cividis": ("yellow", "grey"), "plasma": ("yellow", "magenta"), "jet": ("dark red", "green"),
    "RdBu_r": ("red", "blue"), "PuOr_r": ("brown", "purple"), "coolwarm": ("red", "blue"),
    "BrBG": ("teal", "brown")})


# ----------------------------------------------------------------------------- maps

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


def map_problem(saliency: np.ndarray, fraction: float = DEGENERATE_FRACTION) -> Optional[str]:
    """What makes a map show nothing, in words for the figure, or None for a usable map: all
    zero, or constant (spread ``max - min`` at most ``fraction`` of the largest magnitude, e.g. a
    level plus 1e-6 noise)."""
    values = np.asarray(saliency, dtype=np.float64)
    if values.size == 0:
        return "map is empty: no evidence"
    magnitude = float(np.abs(values).max())
    if magnitude == 0.0:
        return "map is all zero: no evidence"
    spread = float(values.max() - values.min())
    if spread <= fraction * magnitude:
        return (f"map is constant (spread {spread / magnitude:.1e} of its magnitude, at most "
                f"{fraction:g}): no spatial evidence")
    return None


def normalize_map(saliency: np.ndarray, percentile: float = 99.5, mode: str = "robust") -> np.ndarray:
    """One clip's map scaled for display (shared by all its frames, so frames stay comparable);
    result in [0, 1], or [-1, 1] for signed maps. ``mode``: ``robust`` divides by a high
    percentile of |map| (a few extreme voxels do not wash out the rest), ``minmax`` maps an
    unsigned map's [min, max] to [0, 1] (a signed one is divided by its largest magnitude),
    ``none`` keeps the raw values (clipped), to compare clips on one scale. A degenerate map
    (:func:`map_problem`) is all zeros: noise is never stretched to full scale."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMALIZATIONS)}")
    saliency = np.asarray(saliency, dtype=np.float32)
    if map_problem(saliency) is not None:
        return np.zeros_like(saliency, dtype=np.float32)
    lower = -1.0 if (saliency < 0).any() else 0.0
    if mode == "none":
        return np.clip(saliency, lower, 1.0).astype(np.float32)
    magnitude = np.abs(saliency)
    if mode == "minmax":
        if lower == 0.0:
            low, high = float(saliency.min()), float(saliency.max())
            return np.clip((saliency - low) / (high - low), 0.0, 1.0).astype(np.float32)
        return np.clip(saliency / float(magnitude.max()), -1.0, 1.0).astype(np.float32)
    scale = float(np.percentile(magnitude, percentile))
    if scale <= 0.0:
        scale = float(magnitude.max())
    return np.clip(saliency / scale, lower, 1.0).astype(np.float32)


def scale_text(style, mode: str, num_frames: int, percentile: float = 99.5) -> str:
    """The figure's words for its colours and scale: colour map, opacity and normalisation."""
    style = as_style(style)
    how = {"robust": f"|map| / its {percentile:g}th percentile",
           "minmax": "min-max" if not style.signed else "map / max |map|",
           "none": "raw values, not rescaled"}[mode]
    shared = f" over the clip's {num_frames} frames" if mode != "none" else ""
    # three spaces: where a narrow picture may break the line
    return f"colours: {style.colormap}, opacity {style.opacity:g}   scale: {mode} ({how}{shared})"


def frame_importance(saliency: np.ndarray) -> np.ndarray:
    """Share of the map's total magnitude in each frame, ``(T,)`` summing to 1 (zeros if empty)."""
    per_frame = np.abs(saliency).reshape(saliency.shape[0], -1).sum(axis=1).astype(np.float64)
    total = per_frame.sum()
    return per_frame / total if total > 0 else per_frame


# ----------------------------------------------------------------------------- colours

@dataclass(frozen=True)
class Style:
    """How a map is coloured: ``colormap`` (one of :data:`COLORMAPS`), ``signed`` (values in
    [-1, 1] on a diverging map, else [0, 1]) and ``opacity`` (the overlay's strength at |m| = 1)."""

    colormap: str
    signed: bool
    opacity: float = 1.0

    def __post_init__(self):
        if self.colormap not in COLORMAPS:
            raise ValueError(f"unknown colour map {self.colormap!r}; choose from {', '.join(COLORMAPS)}")
        if not 0.0 < self.opacity <= 1.0:
            raise ValueError(f"opacity must lie in (0, 1], got {self.opacity}")


def as_style(style) -> Style:
    """A :class:`Style` from a style or a style name (a colour map, signed when it is
    diverging; ``"diverging"``: the default diverging map)."""
    if isinstance(style, Style):
        return style
    if style == "diverging":
        return Style(DEFAULT_DIVERGING, True)
    if style not in COLORMAPS:
        raise ValueError(f"unknown overlay style {style!r}; choose from {', '.join(STYLES)}")
    return Style(style, style in DIVERGING_MAPS)


def overlay_style(signed_method: bool, polarity: str, colormap: Optional[str] = None,
                  opacity: float = 1.0) -> Style:
    """Colour scheme: a signed map under ``both`` on a diverging map, anything else (unsigned
    maps, one side of a signed map) on a sequential one; ``colormap`` overrides the default."""
    if polarity not in POLARITIES:
        raise ValueError(f"unknown polarity {polarity!r}; choose from {', '.join(POLARITIES)}")
    signed = signed_method and polarity == "both"
    default = DEFAULT_DIVERGING if signed else DEFAULT_SEQUENTIAL
    return Style(colormap or default, signed, opacity)


def is_signed_style(style) -> bool:
    """Whether the style shows values in [-1, 1] (else [0, 1])."""
    return as_style(style).signed


# The colour maps' tables as matplotlib samples them, written by
# ``python -m utils.render.make_colour_tables``: importing matplotlib costs a one-clip call 0.2 s.
COLOUR_TABLES_FILE = Path(__file__).with_name("colour_maps.npz")


def matplotlib_table(name: str) -> np.ndarray:
    """The 256 colours matplotlib gives colour map ``name``: ``(256, 3)`` float64 in [0, 1]."""
    from matplotlib import colormaps
    return colormaps[name](np.arange(LUT_SIZE))[:, :3]


def colour_tables_of(names: Sequence[str]) -> dict:
    """name -> :func:`matplotlib_table`, read from the bundled file; matplotlib is asked only
    for a map the file lacks (or when the file is missing)."""
    try:
        with np.load(COLOUR_TABLES_FILE) as bundled:
            tables = {name: bundled[name] for name in names if name in bundled.files}
    except OSError:
        tables = {}
    return {name: tables[name] if name in tables and tables[name].shape == (LUT_SIZE, 3)
            else matplotlib_table(name) for name in names}


def _read_only(table: np.ndarray) -> np.ndarray:
    lut = table.astype(np.float32)
    lut.setflags(write=False)
    return lut


# Read-only and filled once at import: every picture needs its table two or three times.
_LUTS = MappingProxyType({name: _read_only(table)
                          for name, table in colour_tables_of(COLORMAPS).items()})


def colour_lut(style) -> np.ndarray:
    """The style's 256 full-strength colours, ``(256, 3)`` float32 in [0, 1], read-only. Entry
    ``i`` is the colour of map value ``i / 255`` (``2 i / 255 - 1`` for signed styles), exactly
    as matplotlib samples the colour map."""
    return _LUTS[as_style(style).colormap]


def _lut_index(display_map: np.ndarray, style: Style) -> np.ndarray:
    """LUT row of each value, the way matplotlib indexes a 256-colour map (floor, clipped)."""
    position = (display_map + 1.0) * 0.5 if style.signed else display_map
    index = (position * LUT_SIZE).astype(np.int32)   # truncation = floor for values >= 0
    return np.clip(index, 0, LUT_SIZE - 1, out=index)


def _overlay_inputs(frames, display_map, style, lut: Optional[np.ndarray]):
    """Checked ``(frames, display_map float32, full-strength colour per pixel (..., 3), style)``."""
    style = as_style(style)
    display_map = np.asarray(display_map, dtype=np.float32)
    frames = np.asarray(frames)
    if frames.shape[:-1] != display_map.shape or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.shape} and map {display_map.shape} do not match")
    table = colour_lut(style) if lut is None else lut
    return frames, display_map, table.take(_lut_index(display_map, style), axis=0), style


def overlay(frames: np.ndarray, display_map: np.ndarray, style,
            lut: Optional[np.ndarray] = None) -> np.ndarray:
    """Blend a normalised map onto frames: ``(1 - a) frame + a colour(m)`` with
    ``a = opacity |m|^0.8``.

    ``style``: a :class:`Style` or a style name (:func:`as_style`). ``frames``: float in [0, 1]
    or uint8. Returns ``(T, H, W, 3)`` float32 in [0, 1]. Colours come from a 256-entry table
    (``lut``, default :func:`colour_lut` of the style), not a colour-map call per pixel.
    """
    frames, display_map, colour, style = _overlay_inputs(frames, display_map, style, lut)
    if frames.dtype == np.uint8:
        frames = frames.astype(np.float32) * (1.0 / 255.0)
    alpha = np.abs(display_map) ** np.float32(0.8) * np.float32(style.opacity)
    alpha = alpha[..., None]
    blended = frames.astype(np.float32, copy=False) * (1.0 - alpha)
    blended += alpha * colour
    return np.clip(blended, 0.0, 1.0, out=blended)


ALPHA_TABLE_SIZE = 4096


def _alpha_table() -> np.ndarray:
    """``(i / 4095) ** 0.8`` for ``i`` in 0..4095: the overlay's opacity by map magnitude."""
    return ((np.arange(ALPHA_TABLE_SIZE, dtype=np.float64) / (ALPHA_TABLE_SIZE - 1))
            ** 0.8).astype(np.float32)


def overlay_uint8(frames: np.ndarray, display_map: np.ndarray, style,
                  lut: Optional[np.ndarray] = None) -> np.ndarray:
    """:func:`overlay` as ``uint8`` (``to_uint8(overlay(...))`` to within one level of 255), in
    fewer passes over the pixels: ``frame + a (colour - frame)`` on the 0-255 scale, rounded.
    The blend of values in [0, 1] with ``a`` in [0, 1] stays in range, so only ``a`` is clipped.
    What the writers use; :func:`overlay` stays the float reference."""
    frames, display_map, colour, style = _overlay_inputs(frames, display_map, style, lut)
    # a = |m|^0.8 from a 4096-entry table (off by < 0.2 of a level on the 0-255 scale; pow
    # per pixel costs more than the rest of the blend)
    steps = ALPHA_TABLE_SIZE - 1
    position = np.abs(display_map) * np.float32(steps) + np.float32(0.5)
    np.minimum(position, np.float32(steps), out=position)
    alpha = _alpha_table().take(position.astype(np.int32))
    if style.opacity != 1.0:
        alpha *= np.float32(style.opacity)
    colour = colour.astype(np.float32, copy=False) * np.float32(255.0)   # (..., 3) on 0-255
    base = to_uint8(frames).astype(np.float32)
    colour -= base
    colour *= alpha[..., None]
    colour += base
    colour += np.float32(0.5)
    return colour.astype(np.uint8)


def colour_bar_colours(style, values: np.ndarray, lut: Optional[np.ndarray] = None) -> np.ndarray:
    """What a mid-grey pixel looks like under the overlay at each map value: the colours the
    colour bars show, ``(N, 3)`` float in [0, 1]."""
    values = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    grey = np.full(values.shape + (3,), BAR_BACKGROUND, dtype=np.float32)
    return overlay(grey, values, style, lut)[:, 0]


def _to_rgb8(colour: np.ndarray) -> Colour:
    return tuple(int(round(float(c) * 255)) for c in colour)  # type: ignore[return-value]


def legend_entries(style, target: str, polarity: str = "positive") -> List[Tuple[Colour, str]]:
    """Words for the colours, each with the full-strength colour it names: ``(rgb, text)``."""
    style = as_style(style)
    full = colour_lut(style)
    top, other = COLOUR_WORDS[style.colormap]
    if style.signed:
        return [(_to_rgb8(full[-1]), f"{top}: for {target}"),
                (_to_rgb8(full[0]), f"{other}: against {target}")]
    direction = "against" if polarity == "negative" else "for"
    return [(_to_rgb8(full[-1]), f"{top}: strongest evidence {direction} {target}"),
            (_to_rgb8(full[LUT_SIZE // 2]), f"{other}: half as strong")]


def layer_text(info: dict) -> Optional[str]:
    """``"layer Mixed_5c, grid 2 x 7 x 7"`` from a CAM method's ``info`` (None for others)."""
    layer = info.get("target_layer")
    if not layer:
        return None
    grid = info.get("layer_grid")
    return f"layer {layer}" + (f", grid {' x '.join(str(grid).split('x'))}" if grid else "")


def map_time_steps(info: dict) -> Optional[int]:
    """Time steps of the grid the map was computed on (CAM layers), from ``info["layer_grid"]``
    (``"2x7x7"`` -> 2); None when the method does not say."""
    grid = info.get("layer_grid")
    if not grid:
        return None
    parts = str(grid).split("x")
    return int(parts[0]) if len(parts) == 3 and parts[0].isdigit() else None


def time_note(time_steps: Optional[int], num_frames: int) -> Optional[str]:
    """A note when the map's time grid is coarser than the frames, else None."""
    if time_steps is None or time_steps >= num_frames:
        return None
    steps = f"{time_steps} time step" + ("" if time_steps == 1 else "s")
    return f"map has {steps}: per-frame bar is interpolated"


# ----------------------------------------------------------------------------- captions

@dataclass(frozen=True)
class Caption:
    """What the pictures of one map say about it. ``probability``: NaN when there is none
    (regression); ``extra``: further facts, e.g. :func:`layer_text` or a perturbation area;
    ``target_probability`` / ``target_rank``: the explained class's probability and rank
    (1 = the prediction; NaN / None for regression); ``top_classes``: the clip's top classes
    with their probabilities; ``scale``: :func:`scale_text`; ``problem``: what makes the map
    show nothing (:func:`map_problem`), stamped on every picture."""

    clip: str
    label: Optional[str]
    prediction: str
    probability: float
    target: str
    method: str
    model: str
    polarity: str = "positive"
    extra: Sequence[str] = ()
    target_probability: float = float("nan")
    target_rank: Optional[int] = None
    top_classes: Sequence[Tuple[str, float]] = ()
    scale: str = ""
    problem: Optional[str] = None

    def prediction_text(self) -> str:
        if not self.prediction:
            return ""
        probability = f" ({self.probability:.2f})" if self.probability == self.probability else ""
        return f"prediction: {self.prediction}{probability}"

    def target_text(self) -> str:
        """``explained: ironing (p 0.12, rank 3)``."""
        facts = []
        if self.target_probability == self.target_probability:
            facts.append(f"p {self.target_probability:.2f}")
        if self.target_rank is not None:
            facts.append(f"rank {self.target_rank}")
        return f"explained: {self.target}" + (f" ({', '.join(facts)})" if facts else "")

    def top_text(self) -> str:
        """``top-5: ironing 0.81, knitting 0.10, ...`` (empty without classes)."""
        if not self.top_classes:
            return ""
        return (f"top-{len(self.top_classes)}: "
                + ", ".join(f"{name} {p:.2f}" for name, p in self.top_classes))

    def title_lines(self) -> List[str]:
        """Grid title: clip; label, prediction, target; top classes; method, model, extras,
        polarity; colours and scale."""
        facts = [f"label: {self.label or 'unknown'}", self.prediction_text(), self.target_text()]
        setup = [f"{self.method} / {self.model}", *self.extra, f"polarity: {self.polarity}"]
        lines = [self.clip, "   ".join(p for p in facts if p)]
        if self.top_classes:
            lines.append(self.top_text())
        lines.append("   ".join(p for p in setup if p))
        if self.scale:
            lines.append(self.scale)
        return lines

    def header_lines(self) -> List[str]:
        """Animation header: the same facts, shorter lines."""
        facts = [f"label: {self.label or 'unknown'}", self.prediction_text()]
        lines = [self.clip, "   ".join(p for p in facts if p),
                 f"{self.target_text()}   {self.method} / {self.model}"]
        if self.top_classes:
            lines.append(self.top_text())
        if self.scale:
            lines.append(self.scale)
        return lines


class TextLog:
    """A font that writes down every text it draws (``texts``) before drawing it: the pictures
    keep a record of what they say, for tests and for readers without OCR."""

    def __init__(self, font, texts: List[str]):
        self.font, self.texts = font, texts
        self.size = font.size

    def getlength(self, text: str) -> float:
        return self.font.getlength(text)

    def draw(self, image, xy, text: str, fill: Colour) -> None:
        self.texts.append(text)
        self.font.draw(image, xy, text, fill)


def logged(font, texts: Optional[List[str]]):
    """``font``, recording its texts into ``texts`` when a list is given."""
    return font if texts is None else TextLog(font, texts)


# ----------------------------------------------------------------------------- drawing helpers

class _Kept:
    """A least-recently-used table bounded by entry count and by bytes (not thread-safe on its
    own: :class:`StampFont` holds a lock around it)."""

    def __init__(self, limit: int, max_bytes: int):
        self.limit, self.max_bytes = limit, max_bytes
        self.entries: OrderedDict = OrderedDict()          # key -> (value, bytes)
        self.bytes = 0

    def get(self, key):
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return entry[0]

    def put(self, key, value, size: int) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes:
            return
        self.entries[key] = (value, size)
        self.bytes += size
        while len(self.entries) > self.limit or self.bytes > self.max_bytes:
            _, (_, dropped) = self.entries.popitem(last=False)
            self.bytes -= dropped

    def __contains__(self, key) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)


class StampFont:
    """A font that keeps the anti-aliased mask and width of the texts it draws and stamps the
    mask from then on. FreeType drawing holds the GIL (two threads draw text no faster than
    one) and every clip of a run repeats most of its texts (``t=3``, tick labels, chart labels,
    legends, notes), so this saves the writer threads most of their text time. Texts up to
    ``max_chars`` long are kept, the ``limit`` most recently used ones within ``max_bytes`` per
    table (least recently used dropped first, so texts seen once, like clip names, make room
    for repeated ones); longer texts are drawn directly. On arrays, a text on plain white is
    copied in finished (kept per text and colour). Stamps are pixel-identical to
    ``ImageDraw.text`` (fractional positions, which FreeType renders sub-pixel, are drawn
    directly). Safe to share between threads."""

    def __init__(self, size: int, limit: int = 512, max_chars: int = 160,
                 max_bytes: int = 4 << 20):
        self.font = ImageFont.load_default(size=size)
        self.size = size
        self.limit, self.max_chars = limit, max_chars
        self._masks = _Kept(limit, max_bytes)
        self._lengths = _Kept(limit, max_bytes)
        self._patches = _Kept(limit, max_bytes)    # (text, colour) -> the text on white
        self._lock = threading.Lock()

    def _get(self, table: _Kept, key):
        with self._lock:
            return table.get(key)

    def _put(self, table: _Kept, key, value, size: int) -> None:
        with self._lock:
            table.put(key, value, size)

    def getlength(self, text: str) -> float:
        length = self._get(self._lengths, text)
        if length is None:
            length = self.font.getlength(text)
            if len(text) <= self.max_chars:
                self._put(self._lengths, text, length, 64 + len(text))
        return length

    def draw(self, image, xy: Tuple[float, float], text: str, fill: Colour) -> None:
        """Draw ``text`` with its top-left at ``xy``, like ``ImageDraw.text``, on ``image``: a
        Pillow RGB image, or an RGB ``(H, W, 3)`` uint8 array changed in place (no conversion
        of the whole picture to and from Pillow)."""
        if len(text) > self.max_chars or xy[0] != int(xy[0]) or xy[1] != int(xy[1]):
            # very long texts are not kept; FreeType places fractional positions sub-pixel
            if isinstance(image, np.ndarray):
                _draw_text_on_array(image, xy, text, fill, self.font)
            else:
                ImageDraw.Draw(image).text(xy, text, fill=fill, font=self.font)
            return
        stamp = self._get(self._masks, text)
        if stamp is None:
            left, top, right, bottom = self.font.getbbox(text)
            mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
            ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=self.font)
            mask_array = np.asarray(mask)
            stamp = (mask, mask_array, left, top)
            self._put(self._masks, text, stamp, 2 * mask_array.nbytes)
        mask, mask_array, left, top = stamp
        x, y = int(xy[0]) + left, int(xy[1]) + top
        if not isinstance(image, np.ndarray):
            image.paste(tuple(fill), (x, y), mask)
            return
        height, width = mask_array.shape
        if 0 <= x and 0 <= y and x + width <= image.shape[1] and y + height <= image.shape[0]:
            region = image[y:y + height, x:x + width]
            if region.min() == 255:
                # on plain white (most texts): the finished patch, kept per text and colour
                key = (text, tuple(fill))
                patch = self._get(self._patches, key)
                if patch is None:
                    patch = np.full((height, width, 3), 255, dtype=np.uint8)
                    blend_mask(patch, 0, 0, mask_array, fill)
                    self._put(self._patches, key, patch, patch.nbytes)
                region[...] = patch
                return
        blend_mask(image, x, y, mask_array, fill)


def blend_mask(canvas: np.ndarray, x: int, y: int, mask: np.ndarray, fill: Colour) -> None:
    """Colour ``fill`` through the 8-bit ``mask`` onto ``canvas`` (RGB uint8, in place) with the
    mask's top-left at ``(x, y)``, clipped to the canvas: the very arithmetic of Pillow's
    ``paste(colour, box, mask)`` (``(c (255 - m) + f m) / 255``, rounded its way)."""
    height, width = mask.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, canvas.shape[1]), min(y + height, canvas.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    weight = mask[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.uint16)[..., None]
    region = canvas[y0:y1, x0:x1]
    value = region.astype(np.uint16) * (255 - weight)       # at most 255 * 255 + 128: fits
    value += np.asarray(fill, dtype=np.uint16) * weight
    value += 128
    value += value >> 8
    region[...] = value >> 8


def _draw_text_on_array(canvas: np.ndarray, xy: Tuple[float, float], text: str, fill: Colour,
                        font) -> None:
    """``ImageDraw.text`` on the part of ``canvas`` the text covers. The part starts at or
    before ``xy`` on whole pixels, so the position within it has the same sign and fraction
    (FreeType's sub-pixel placement) as on the whole canvas."""
    left, top, right, bottom = font.getbbox(text)
    x0 = max(0, int(math.floor(xy[0])) + min(left, 0) - 2)
    y0 = max(0, int(math.floor(xy[1])) + min(top, 0) - 2)
    x1 = min(canvas.shape[1], int(math.ceil(xy[0])) + right + 2)
    y1 = min(canvas.shape[0], int(math.ceil(xy[1])) + bottom + 2)
    if x0 >= x1 or y0 >= y1:
        return
    region = Image.fromarray(np.ascontiguousarray(canvas[y0:y1, x0:x1]))
    ImageDraw.Draw(region).text((xy[0] - x0, xy[1] - y0), text, fill=fill, font=font)
    canvas[y0:y1, x0:x1] = np.asarray(region)


class Typesetter:
    """One :class:`StampFont` per size. The pipeline keeps one per run, shared by its writer
    threads (a lost race only draws a text twice); drawing functions make their own when
    given none."""

    def __init__(self, limit: int = 512):
        self.limit = limit
        self._fonts: dict = {}

    def font(self, size: int) -> StampFont:
        font = self._fonts.get(size)
        if font is None:
            font = self._fonts.setdefault(size, StampFont(size, self.limit))
        return font


def font_for(size: int, fonts: Optional[Typesetter] = None) -> StampFont:
    return (fonts or Typesetter()).font(size)


def text_width(font, text: str) -> float:
    return font.getlength(text)


def fit_text(font, text: str, width: float) -> str:
    """``text``, cut with '...' to fit ``width`` pixels."""
    if text_width(font, text) <= width:
        return text
    low, high = 0, len(text)              # the longest prefix that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if text_width(font, text[:middle] + "...") <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "..."


def _wrap(font, text: str, width: float) -> List[str]:
    """Break a line at its three-space separators to fit ``width``; pieces still too long are cut."""
    pieces = [p for p in text.split("   ") if p]
    lines: List[str] = []
    for piece in pieces:
        if lines and text_width(font, lines[-1] + "   " + piece) <= width:
            lines[-1] += "   " + piece
        else:
            lines.append(piece)
    return [fit_text(font, line, width) for line in lines] or [""]


def flow_legend(font, legend: Sequence[Tuple[Colour, str]], x0: int, y: int, width: int,
                swatch: int, line_height: int) -> Tuple[List[Tuple[Colour, str, int, int]], int]:
    """:func:`_flow_legend` for other drawing modules."""
    return _flow_legend(font, legend, x0, y, width, swatch, line_height)


def _flow_legend(font, legend: Sequence[Tuple[Colour, str]], x0: int, y: int, width: int,
                 swatch: int, line_height: int) -> Tuple[List[Tuple[Colour, str, int, int]], int]:
    """Place legend entries (swatch + text) left to right, starting a new line when one does
    not fit; returns ``(colour, text, x, y)`` per entry and the y below the legend."""
    items: List[Tuple[Colour, str, int, int]] = []
    x = x0
    for colour, text in legend:
        text = fit_text(font, text, width - swatch - 5)
        needed = swatch + 5 + int(math.ceil(text_width(font, text)))
        if items and x + needed > x0 + width:
            x, y = x0, y + line_height
        items.append((tuple(colour), text, x, y))  # type: ignore[arg-type]
        x += needed + 14
    return items, (y + line_height if items else y)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float [0, 1] or uint8 images -> uint8."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    # one C-ordered float32 buffer, changed in place: a view such as a permuted tensor's
    # gives a C-ordered result too (what the later per-pixel passes run fastest on)
    scaled = np.empty(images.shape, dtype=np.float32)
    np.clip(images, 0.0, 1.0, out=scaled)
    scaled *= np.float32(255.0)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``(..., H, W, 3)`` by an integer factor."""
    if scale == 1:
        return images
    return np.repeat(np.repeat(images, scale, axis=-3), scale, axis=-2)


def scale_for(height: int, width: int, min_side: int) -> int:
    return max(1, int(math.ceil(min_side / max(1, min(height, width)))))


def _fill(canvas: np.ndarray, box: Box, colour: Sequence[int]) -> None:
    x0, y0, x1, y1 = box
    canvas[y0:y1, x0:x1] = colour


def _paint_colour_bar(canvas: np.ndarray, box: Box, style, lut: np.ndarray) -> None:
    """Vertical colour bar: top = +1, bottom = 0 (or -1 for signed styles)."""
    x0, y0, x1, y1 = box
    low = -1.0 if is_signed_style(style) else 0.0
    values = np.linspace(1.0, low, y1 - y0, dtype=np.float32)
    colours = to_uint8(colour_bar_colours(style, values, lut))
    canvas[y0:y1, x0:x1] = colours[:, None, :]


def paint_colour_bar(canvas: np.ndarray, box: Box, style) -> None:
    """A colour bar of ``style`` in ``box`` (top = +1, bottom = 0 or -1)."""
    _paint_colour_bar(canvas, box, style, colour_lut(style))


def tick_y(box: Box, style, value: float) -> int:
    """Row of ``value`` on a colour bar in ``box``."""
    return _tick_y(box, style, value)


def colour_bar_ticks(style) -> List[Tuple[float, str]]:
    """Tick values and labels of the colour bar."""
    if is_signed_style(style):
        return [(1.0, "+1"), (0.0, "0"), (-1.0, "-1")]
    return [(1.0, "1"), (0.5, "0.5"), (0.0, "0")]


def _tick_y(box: Box, style, value: float) -> int:
    x0, y0, x1, y1 = box
    low = -1.0 if is_signed_style(style) else 0.0
    return int(round(y0 + (1.0 - value) / (1.0 - low) * (y1 - y0 - 1)))


def bar_slots(box: Box, count: int) -> List[Tuple[int, int]]:
    """x ranges ``(start, stop)`` of the ``count`` bars of a chart in ``box`` (80% of each slot)."""
    x0, _, x1, _ = box
    slot = (x1 - x0) / count
    slots = []
    for t in range(count):
        start = int(round(x0 + (t + 0.1) * slot))
        stop = max(start + 1, int(round(x0 + (t + 0.9) * slot)))
        slots.append((start, stop))
    return slots


def _paint_bars(canvas: np.ndarray, box: Box, values: np.ndarray, colour: Colour,
                reference: Optional[float] = None) -> None:
    """Bar chart of ``values`` (scaled to the largest) filling ``box``, with a baseline and an
    optional grey reference level (e.g. the uniform share 1/T)."""
    x0, y0, x1, y1 = box
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    top = max(float(values.max(initial=0.0)), reference or 0.0)
    height = y1 - y0
    if reference and top > 0:                          # behind the bars, seen between them
        level = y1 - int(round(height * reference / top))
        canvas[max(y0, level), x0:x1:4] = (150, 150, 150)
    for (start, stop), value in zip(bar_slots(box, len(values)), values):
        bar = int(round(height * value / top)) if top > 0 else 0
        if bar > 0:
            canvas[y1 - bar:y1, start:stop] = colour
    canvas[y1 - 1, x0:x1] = (60, 60, 60)


# ----------------------------------------------------------------------------- frame grid

@dataclass(frozen=True)
class GridLayout:
    """Where everything of a frame grid lies (pixels). ``frame_boxes[t]`` / ``overlay_boxes[t]``:
    the tiles of frame ``t``; ``colour_bars``: one per overlay row; ``charts``: ``(name, box,
    label y)`` for ``"importance"`` and ``"attention"``; ``legend_items``: each legend entry's colour,
    text and the top left corner of its swatch (the text follows the swatch)."""

    width: int
    height: int
    scale: int
    title_lines: Tuple[str, ...]
    title_y: Tuple[int, ...]
    legend_items: Tuple[Tuple[Colour, str, int, int], ...]   # colour, text, x, y of the swatch
    frame_boxes: Tuple[Box, ...]
    overlay_boxes: Tuple[Box, ...]
    colour_bars: Tuple[Box, ...]
    charts: Tuple[Tuple[str, Box, int], ...]             # name, chart box, y of its label
    time_note_y: Optional[int]
    font_size: int
    title_size: int
    alert_lines: Tuple[str, ...] = ()
    alert_y: Tuple[int, ...] = ()
    score_boxes: Tuple[Tuple[Box, int], ...] = ()     # a score panel's box, y of its label


_MARGIN, _GAP, _BAR_W, _BAR_TEXT = 10, 2, 14, 34
_CHART_H = 56


def _grid_header(title_lines: Sequence[str], alert: Optional[str],
                 legend: Optional[Sequence[Tuple[Colour, str]]], text_w: int,
                 fonts: Optional[Typesetter], font_size: int, title_size: int):
    """The title lines, the alert lines and the legend above the tiles: ``(lines, their y,
    alert lines, their y, legend items, y below them)``."""
    title_font = font_for(title_size, fonts)
    lines: List[str] = []
    for line in title_lines:
        lines.extend(_wrap(title_font, line, text_w))
    y = _MARGIN
    title_y = []
    for _ in lines:
        title_y.append(y)
        y += title_size + 5
    alert_lines = tuple(_wrap(title_font, alert, text_w)) if alert else ()
    alert_y = []
    for _ in alert_lines:
        alert_y.append(y)
        y += title_size + 5
    items: List[Tuple[Colour, str, int, int]] = []
    if legend:
        items, y = _flow_legend(font_for(font_size, fonts), legend, _MARGIN, y, text_w, 13, font_size + 5)
    return lines, title_y, alert_lines, alert_y, items, y


def _grid_tiles(num_frames: int, tile_h: int, tile_w: int, grid_w: int, y: int, font_size: int):
    """The frame and overlay tiles, 8 per block, and each block's colour bar, from ``y``:
    ``(frame boxes, overlay boxes, colour bars, y below them)``."""
    frame_boxes, overlay_boxes, bars = [], [], []
    for block in range(-(-num_frames // GRID_COLUMNS)):
        y += font_size + 3                                  # the row of "t=.." labels
        for column in range(GRID_COLUMNS):
            t = block * GRID_COLUMNS + column
            if t >= num_frames:
                break
            x = _MARGIN + column * (tile_w + _GAP)
            frame_boxes.append((x, y, x + tile_w, y + tile_h))
            overlay_boxes.append((x, y + tile_h + _GAP, x + tile_w, y + 2 * tile_h + _GAP))
        bar_x = _MARGIN + grid_w + 8
        bars.append((bar_x, y + tile_h + _GAP, bar_x + _BAR_W, y + 2 * tile_h + _GAP))
        y += 2 * tile_h + _GAP + 8
    return frame_boxes, overlay_boxes, bars, y


def _grid_charts(importance: bool, attention: bool, time_note: Optional[str], grid_w: int,
                 y: int, font_size: int):
    """The per-frame charts and the time note, from ``y``: ``(charts, note y, y below)``."""
    charts = []
    note_y = None
    for name, present in (("importance", importance), ("attention", attention)):
        if not present:
            continue
        label_y = y + 2
        y += font_size + 6
        charts.append((name, (_MARGIN, y, _MARGIN + grid_w, y + _CHART_H), label_y))
        y += _CHART_H + font_size + 6                       # chart and its frame numbers
        if name == "importance" and time_note:
            note_y = y
            y += font_size + 6
    if time_note and note_y is None:
        note_y = y
        y += font_size + 6
    return charts, note_y, y


def _score_panels(scores: int, grid_w: int, y: int, font_size: int):
    """``scores`` score panels side by side, from ``y``: ``(panels (box, label y), y below)``."""
    score_boxes = []
    if scores:
        label_y = y + 2
        y += font_size + 6
        panel_w = (grid_w - (scores - 1) * 3 * _GAP * 4) // scores
        for index in range(scores):
            x = _MARGIN + index * (panel_w + 3 * _GAP * 4)
            score_boxes.append(((x, y, x + panel_w, y + _CHART_H), label_y))
        y += _CHART_H + font_size + 6
    return score_boxes, y


def grid_layout(num_frames: int, height: int, width: int, title_lines: Sequence[str] = (),
                legend: Optional[Sequence[Tuple[Colour, str]]] = None, importance: bool = True,
                attention: bool = False, time_note: Optional[str] = None,
                min_tile: int = 112, fonts: Optional[Typesetter] = None,
                alert: Optional[str] = None, scores: int = 0) -> GridLayout:
    """Geometry of :func:`render_grid_image` for ``num_frames`` frames of ``height x width``;
    ``alert``: a line in red under the title; ``scores``: the number of score panels."""
    if num_frames < 1:
        raise ValueError("a frame grid needs at least one frame")
    scale = scale_for(height, width, min_tile)
    tile_h, tile_w = height * scale, width * scale
    font_size = 13
    title_size = 15
    columns = min(GRID_COLUMNS, num_frames)
    grid_w = columns * tile_w + (columns - 1) * _GAP
    total_w = 2 * _MARGIN + grid_w + 8 + _BAR_W + 4 + _BAR_TEXT
    lines, title_y, alert_lines, alert_y, items, y = _grid_header(
        title_lines, alert, legend, total_w - 2 * _MARGIN, fonts, font_size, title_size)
    frame_boxes, overlay_boxes, bars, y = _grid_tiles(num_frames, tile_h, tile_w, grid_w, y + 6,
                                                      font_size)
    charts, note_y, y = _grid_charts(importance, attention, time_note, grid_w, y, font_size)
    score_boxes, y = _score_panels(scores, grid_w, y, font_size)
    total_h = y + _MARGIN
    return GridLayout(total_w, total_h, scale, tuple(lines), tuple(title_y), tuple(items),
                      tuple(frame_boxes), tuple(overlay_boxes), tuple(bars), tuple(charts), note_y,
                      font_size, title_size, alert_lines, tuple(alert_y), tuple(score_boxes))


def _draw_chart_text(image: np.ndarray, font: StampFont, box: Box, label_y: int, label: str,
                     count: int) -> None:
    font.draw(image, (box[0], label_y), label, BLACK)
    # every frame up to 8 frames, then every second one (the tiles carry every t= label)
    step = 1 if count <= 8 else 2 if count <= 32 else int(math.ceil(count / 16))
    for t, (start, stop) in enumerate(bar_slots(box, count)):
        if t % step == 0:
            text = str(t)
            x = int(round((start + stop) / 2 - text_width(font, text) / 2))
            font.draw(image, (x, box[3] + 2), text, GREY_TEXT)


@dataclass(frozen=True)
class ScoreCurve:
    """One faithfulness score of a map for the figure: ``name`` (``deletion`` or ``insertion``),
    the map's curve and AUC, a random map's curve and AUC on the same clip, and whether lower
    is better (deletion) or higher (insertion)."""

    name: str
    auc: float
    curve: np.ndarray
    random_auc: float
    random_curve: np.ndarray
    lower_is_better: bool

    def text(self) -> str:
        better = "lower" if self.lower_is_better else "higher"
        return (f"{self.name} AUC {self.auc:.3f} (red), random map {self.random_auc:.3f} (grey); "
                f"{better} is better")


def _paint_curves(canvas: np.ndarray, box: Box, curves: Sequence[Tuple[np.ndarray, Colour]]) -> None:
    """Line charts of ``curves`` over [0, 1] on the x axis (the fraction of voxels changed),
    y from 0 to 1 (or the curves' own range when they leave it), with a frame."""
    x0, y0, x1, y1 = box
    values = np.concatenate([np.asarray(c, dtype=np.float64) for c, _ in curves])
    low, high = min(0.0, float(values.min())), max(1.0, float(values.max()))
    region = Image.fromarray(np.ascontiguousarray(canvas[y0:y1, x0:x1]))
    draw = ImageDraw.Draw(region)
    width, height = x1 - x0, y1 - y0
    draw.rectangle((0, 0, width - 1, height - 1), outline=(190, 190, 190))
    for curve, colour in curves:
        curve = np.asarray(curve, dtype=np.float64)
        xs = np.linspace(0, width - 1, len(curve))
        ys = (height - 1) - (curve - low) / (high - low) * (height - 1)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2)
    canvas[y0:y1, x0:x1] = np.asarray(region)


def checked_pictures(frames, overlays, importance=None, attention=None):
    """``frames`` and ``overlays`` as arrays, checked to be ``(T, H, W, 3)`` alike, with a
    per-frame value of ``importance`` and ``attention`` (when given) for each frame."""
    frames, overlays = np.asarray(frames), np.asarray(overlays)
    if frames.shape != overlays.shape or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.shape} and overlays {overlays.shape} must both be (T, H, W, 3)")
    for name, values in (("importance", importance), ("attention", attention)):
        if values is not None and len(values) != frames.shape[0]:
            raise ValueError(f"{name} has {len(values)} values for {frames.shape[0]} frames")
    return frames, overlays


def _paint_grid(canvas: np.ndarray, layout: GridLayout, frames: np.ndarray,
                overlays: np.ndarray, colour_style, importance, attention,
                scores: Sequence[ScoreCurve]) -> None:
    """The tiles, colour bars, per-frame charts, legend swatches and score curves of a frame
    grid, painted onto ``canvas`` in place."""
    tiles_frames = upscale(to_uint8(frames), layout.scale)
    tiles_overlays = upscale(to_uint8(overlays), layout.scale)
    for t, (box, obox) in enumerate(zip(layout.frame_boxes, layout.overlay_boxes)):
        canvas[box[1]:box[3], box[0]:box[2]] = tiles_frames[t]
        canvas[obox[1]:obox[3], obox[0]:obox[2]] = tiles_overlays[t]
    lut = colour_lut(colour_style)
    for bar in layout.colour_bars:
        _paint_colour_bar(canvas, bar, colour_style, lut)
    chart_values = {"importance": (importance, IMPORTANCE_COLOUR), "attention": (attention, ATTENTION_COLOUR)}
    for name, box, _ in layout.charts:
        values, colour = chart_values[name]
        _paint_bars(canvas, box, values, colour, 1.0 / len(frames) if name == "importance" else None)
    for colour, _, x, y in layout.legend_items:
        _fill(canvas, (x, y + 2, x + 13, y + 15), colour)
    for score, (box, _) in zip(scores, layout.score_boxes):
        _paint_curves(canvas, box, [(score.random_curve, RANDOM_CURVE_COLOUR),
                                    (score.curve, MAP_CURVE_COLOUR)])


def _stamp_score_texts(image: np.ndarray, font, scores: Sequence[ScoreCurve],
                       layout: GridLayout) -> None:
    """Each score panel's label and its x axis (0, what is changed, 1)."""
    for score, (box, label_y) in zip(scores, layout.score_boxes):
        font.draw(image, (box[0], label_y), fit_text(font, score.text(), box[2] - box[0]), BLACK)
        font.draw(image, (box[0], box[3] + 2), "0", GREY_TEXT)
        axis = "fraction of voxels " + ("removed" if score.lower_is_better else "inserted")
        axis_w = int(text_width(font, axis))
        font.draw(image, ((box[0] + box[2] - axis_w) // 2, box[3] + 2), axis, GREY_TEXT)
        font.draw(image, (box[2] - int(text_width(font, "1")), box[3] + 2), "1", GREY_TEXT)


def _stamp_grid_texts(image: np.ndarray, layout: GridLayout, font, title_font, colour_style,
                      importance, attention, time_note: Optional[str],
                      scores: Sequence[ScoreCurve], num_frames: int) -> None:
    """The title, alert, legend, frame numbers, colour bar ticks, chart labels, time note and
    score texts of a frame grid, stamped onto ``image`` in place."""
    for line, y in zip(layout.title_lines, layout.title_y):
        title_font.draw(image, (_MARGIN, y), line, BLACK)
    for line, y in zip(layout.alert_lines, layout.alert_y):
        title_font.draw(image, (_MARGIN, y), line, ALERT_COLOUR)
    for _, text, x, y in layout.legend_items:
        font.draw(image, (x + 18, y + 1), text, BLACK)
    for t, box in enumerate(layout.frame_boxes):
        font.draw(image, (box[0] + 2, box[1] - layout.font_size - 2), f"t={t}", GREY_TEXT)
    for bar in layout.colour_bars:
        for value, text in colour_bar_ticks(colour_style):
            y = _tick_y(bar, colour_style, value)
            _fill(image, (bar[2], y, bar[2] + 4, y + 1), BLACK)      # the tick mark
            font.draw(image, (bar[2] + 5, y - layout.font_size // 2 - 1), text, BLACK)
    for name, box, label_y in layout.charts:
        values = importance if name == "importance" else attention
        peak = float(np.nanmax(values)) if len(values) else 0.0
        label = ("map share per frame (dotted: uniform 1/T)" if name == "importance"
                 else "model attention per frame") + f", max {peak:.3f}"
        _draw_chart_text(image, font, box, label_y, label, num_frames)
    if time_note and layout.time_note_y is not None:
        font.draw(image, (_MARGIN, layout.time_note_y), time_note, GREY_TEXT)
    _stamp_score_texts(image, font, scores, layout)


def render_grid_image(frames: np.ndarray, overlays: np.ndarray, title_lines: Sequence[str],
                      importance: Optional[np.ndarray] = None,
                      attention: Optional[np.ndarray] = None, colour_style="jet",
                      legend: Optional[Sequence[Tuple[Colour, str]]] = None,
                      time_note: Optional[str] = None, min_tile: int = 112,
                      fonts: Optional[Typesetter] = None, alert: Optional[str] = None,
                      scores: Sequence[ScoreCurve] = (),
                      texts: Optional[List[str]] = None) -> np.ndarray:
    """The frame grid as one RGB picture, ``(height, width, 3)`` uint8: 8 columns; per block of 8 frames a row of frames and a
    row of overlays, a colour bar with ticks beside each overlay row; above, the title lines,
    ``alert`` in red (what makes the map show nothing) and the legend (:func:`legend_entries`);
    below, the map's share per frame, the model's attention per frame (when given),
    ``time_note`` and the score curves (map in red, random map in grey). Tiles are upscaled
    (nearest) to at least ``min_tile`` pixels. ``frames``, ``overlays``: ``(T, H, W, 3)``
    float or uint8. ``texts``: a list that receives every text drawn."""
    frames, overlays = checked_pictures(frames, overlays, importance, attention)
    num_frames, height, width = frames.shape[:3]
    fonts = fonts or Typesetter()
    layout = grid_layout(num_frames, height, width, title_lines, legend, importance is not None,
                         attention is not None, time_note, min_tile, fonts, alert, len(scores))
    canvas = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)
    _paint_grid(canvas, layout, frames, overlays, colour_style, importance, attention, scores)
    font = logged(font_for(layout.font_size, fonts), texts)
    title_font = logged(font_for(layout.title_size, fonts), texts)
    # texts are stamped onto the array in place
    _stamp_grid_texts(canvas, layout, font, title_font, colour_style, importance, attention,
                      time_note, scores, num_frames)
    return canvas


# ----------------------------------------------------------------------------- animation

@dataclass(frozen=True)
class AnimationLayout:
    """Where everything of an animation frame lies: ``frame_box`` and ``overlay_box`` side by
    side, ``colour_bar`` to their right, header lines above, charts (name, box, label y) and
    the cursor below. ``width`` and ``height`` are even (H.264 with yuv420p needs that)."""

    width: int
    height: int
    scale: int
    header_lines: Tuple[str, ...]
    header_y: Tuple[int, ...]
    legend_items: Tuple[Tuple[Colour, str, int, int], ...]   # colour, text, x, y of the swatch
    frame_box: Box
    overlay_box: Box
    colour_bar: Box
    charts: Tuple[Tuple[str, Box, int], ...]
    counter_xy: Tuple[int, int]
    time_note_y: Optional[int]
    font_size: int
    alert_count: int = 0              # the last header lines: what makes the map show nothing

    def counter_box(self) -> Box:
        """Where the frame number (``t=3``) is written."""
        x, y = self.counter_xy
        return (x, y, self.width - _MARGIN, y + self.font_size + 4)

    def cursor_boxes(self) -> Tuple[Box, ...]:
        """The strip under each chart in which the cursor moves."""
        return tuple((box[0], box[3] + 1, box[2], box[3] + 1 + _CURSOR_H)
                     for _, box, _ in self.charts)

    def changing_boxes(self) -> Tuple[Box, ...]:
        """Every place in which one animation frame differs from another: the two tiles, the
        cursor strips and the frame number. All other pixels are the same in every frame."""
        return (self.frame_box, self.overlay_box, *self.cursor_boxes(), self.counter_box())


_ANIM_CHART_H = 34
_CURSOR_H = 6


def animation_layout(height: int, width: int, header_lines: Sequence[str] = (),
                     legend: Optional[Sequence[Tuple[Colour, str]]] = None,
                     importance: bool = True, attention: bool = False,
                     time_note: Optional[str] = None, min_side: int = 224,
                     fonts: Optional[Typesetter] = None,
                     alert: Optional[str] = None) -> AnimationLayout:
    """Geometry of :func:`animation_frames` for frames of ``height x width``; ``alert``: red
    lines after the header."""
    scale = scale_for(height, width, min_side)
    tile_h, tile_w = height * scale, width * scale
    font_size = 12
    font = font_for(font_size, fonts)
    body_w = 2 * tile_w + _GAP
    total_w = 2 * _MARGIN + body_w + 8 + _BAR_W + 4 + _BAR_TEXT
    total_w += total_w % 2
    text_w = total_w - 2 * _MARGIN
    lines: List[str] = []
    for line in header_lines:
        lines.extend(_wrap(font, line, text_w))
    alert_lines = _wrap(font, alert, text_w) if alert else []
    lines.extend(alert_lines)
    y = 6
    header_y = []
    for _ in lines:
        header_y.append(y)
        y += font_size + 4
    items: List[Tuple[Colour, str, int, int]] = []
    if legend:
        items, y = _flow_legend(font, legend, _MARGIN, y, text_w, 11, font_size + 4)
    y += 4
    frame_box = (_MARGIN, y, _MARGIN + tile_w, y + tile_h)
    overlay_box = (_MARGIN + tile_w + _GAP, y, _MARGIN + body_w, y + tile_h)
    bar_x = _MARGIN + body_w + 8
    colour_bar = (bar_x, y, bar_x + _BAR_W, y + tile_h)
    y += tile_h + 6
    charts = []
    counter_xy = (total_w - _MARGIN - int(text_width(font, "t=0000")), y)   # frame number, as in the grid
    note_y = None
    for name, present in (("importance", importance), ("attention", attention)):
        if not present:
            continue
        label_y = y
        y += font_size + 4
        charts.append((name, (_MARGIN, y, _MARGIN + body_w, y + _ANIM_CHART_H), label_y))
        y += _ANIM_CHART_H + _CURSOR_H + 4
    if time_note:
        note_y = y
        y += font_size + 4
    y += 4
    y += y % 2
    return AnimationLayout(total_w, y, scale, tuple(lines), tuple(header_y), tuple(items),
                           frame_box, overlay_box, colour_bar, tuple(charts), counter_xy, note_y,
                           font_size, len(alert_lines))


def animation_frames(frames: np.ndarray, overlays: np.ndarray, header_lines: Sequence[str] = (),
                     importance: Optional[np.ndarray] = None, attention: Optional[np.ndarray] = None,
                     colour_style="jet", legend: Optional[Sequence[Tuple[Colour, str]]] = None,
                     time_note: Optional[str] = None, min_side: int = 224,
                     fonts: Optional[Typesetter] = None) -> np.ndarray:
    """One picture per frame, ``(T, height, width, 3)`` uint8 with even sides: header lines
    (clip, label, prediction, target, method), the frame and its overlay side by side with a
    colour bar, and the per-frame charts with a cursor under the current frame's bars."""
    return animation(frames, overlays, header_lines, importance, attention, colour_style, legend,
                     time_note, min_side, fonts)[0]


def animation(frames: np.ndarray, overlays: np.ndarray, header_lines: Sequence[str] = (),
              importance: Optional[np.ndarray] = None, attention: Optional[np.ndarray] = None,
              colour_style="jet", legend: Optional[Sequence[Tuple[Colour, str]]] = None,
              time_note: Optional[str] = None, min_side: int = 224,
              fonts: Optional[Typesetter] = None, alert: Optional[str] = None,
              texts: Optional[List[str]] = None) -> Tuple[np.ndarray, AnimationLayout]:
    """:func:`animation_frames` and the layout they were drawn with (whose
    :meth:`AnimationLayout.changing_boxes` tell an encoder what differs between frames)."""
    frames, overlays = checked_pictures(frames, overlays, importance, attention)
    num_frames, height, width = frames.shape[:3]
    fonts = fonts or Typesetter()
    layout = animation_layout(height, width, header_lines, legend, importance is not None,
                              attention is not None, time_note, min_side, fonts, alert)
    base = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)
    _paint_colour_bar(base, layout.colour_bar, colour_style, colour_lut(colour_style))
    chart_values = {"importance": (importance, IMPORTANCE_COLOUR), "attention": (attention, ATTENTION_COLOUR)}
    for name, box, _ in layout.charts:
        values, colour = chart_values[name]
        _paint_bars(base, box, values, colour, 1.0 / num_frames if name == "importance" else None)
    for colour, _, x, y in layout.legend_items:
        _fill(base, (x, y + 2, x + 11, y + 13), colour)
    image = base                            # texts are stamped onto the array in place
    font = logged(font_for(layout.font_size, fonts), texts)
    first_alert = len(layout.header_lines) - layout.alert_count
    for index, (line, y) in enumerate(zip(layout.header_lines, layout.header_y)):
        font.draw(image, (_MARGIN, y), line, ALERT_COLOUR if index >= first_alert else BLACK)
    for _, text, x, y in layout.legend_items:
        font.draw(image, (x + 16, y), text, BLACK)
    bar = layout.colour_bar
    for value, text in colour_bar_ticks(colour_style):
        y = _tick_y(bar, colour_style, value)
        _fill(base, (bar[2], y, bar[2] + 4, y + 1), BLACK)            # the tick mark
        font.draw(image, (bar[2] + 5, y - layout.font_size // 2 - 1), text, BLACK)
    for name, box, label_y in layout.charts:
        label = "map share per frame" if name == "importance" else "model attention per frame"
        font.draw(image, (box[0], label_y), label, BLACK)
    if time_note and layout.time_note_y is not None:
        font.draw(image, (_MARGIN, layout.time_note_y),
                  fit_text(font, time_note, layout.width - 2 * _MARGIN), GREY_TEXT)

    fb, ob = layout.frame_box, layout.overlay_box
    pictures = np.empty((num_frames,) + base.shape, dtype=np.uint8)
    pictures[:] = base
    pictures[:, fb[1]:fb[3], fb[0]:fb[2]] = upscale(to_uint8(frames), layout.scale)
    pictures[:, ob[1]:ob[3], ob[0]:ob[2]] = upscale(to_uint8(overlays), layout.scale)
    cx0, cy0, cx1, cy1 = layout.counter_box()
    cursors = [(strip, bar_slots(box, num_frames))
               for strip, (_, box, _) in zip(layout.cursor_boxes(), layout.charts)]
    font = font_for(layout.font_size, fonts)       # the frame numbers are not recorded
    for t in range(num_frames):
        for (_, y0, _, y1), slots in cursors:
            start, stop = slots[t]
            pictures[t, y0:y1, start:stop] = CURSOR_COLOUR
        counter = pictures[t, cy0:cy1, cx0:cx1]
        counter[...] = WHITE
        font.draw(counter, (0, 0), f"t={t}", BLACK)
    return pictures, layout
