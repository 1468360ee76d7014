"""From raw attributions to pictures: channel reduction, polarity, robust normalisation,
colour overlays, the frame grid (PNG) and the animation frames (GIF, MP4).

Maps here are per clip: ``(T, H, W)`` numpy arrays; frames are RGB ``(T, H, W, 3)``, float in
[0, 1] or uint8. Pictures are composed with numpy and Pillow (one canvas per clip, text drawn
with Pillow's bundled font); matplotlib is only asked for the 256 colours of a colour map.
The matplotlib figure of earlier versions stays available as :func:`render_grid_matplotlib`
for comparison (``bench/bench_render.py``).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:          # matplotlib's figures load only where one is drawn
    from matplotlib.figure import Figure

POLARITIES = ("positive", "negative", "both")
STYLES = ("jet", "diverging", "green", "red")
GRID_COLUMNS = 8
LUT_SIZE = 256

Colour = Tuple[int, int, int]
Box = Tuple[int, int, int, int]             # x0, y0, x1, y1 (x1, y1 exclusive)

WHITE: Colour = (255, 255, 255)
BLACK: Colour = (0, 0, 0)
GREY_TEXT: Colour = (80, 80, 80)
IMPORTANCE_COLOUR: Colour = (255, 127, 14)    # orange bars: the map's share per frame
ATTENTION_COLOUR: Colour = (31, 119, 180)     # blue bars: the model's temporal attention
CURSOR_COLOUR: Colour = (20, 20, 20)
BAR_BACKGROUND = 0.5                          # colour bars show the overlay on mid-grey


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


# ----------------------------------------------------------------------------- colours

def overlay_style(signed_method: bool, polarity: str) -> str:
    """Colour scheme: Grad-CAM-like maps use jet; signed methods green (for) / red (against),
    or a diverging map under ``both``."""
    if polarity not in POLARITIES:
        raise ValueError(f"unknown polarity {polarity!r}; choose from {', '.join(POLARITIES)}")
    if not signed_method:
        return "diverging" if polarity == "both" else "jet"
    return {"positive": "green", "negative": "red", "both": "diverging"}[polarity]


def is_signed_style(style: str) -> bool:
    """Whether the style shows values in [-1, 1] (else [0, 1])."""
    _check_style(style)
    return style == "diverging"


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown overlay style {style!r}; choose from {', '.join(STYLES)}")


def _make_lut(style: str) -> np.ndarray:
    if style in ("jet", "diverging"):
        name = "jet" if style == "jet" else "coolwarm"
        lut = colormaps[name](np.arange(LUT_SIZE))[:, :3].astype(np.float32)
    else:
        lut = np.zeros((LUT_SIZE, 3), dtype=np.float32)
        lut[:, 1 if style == "green" else 0] = 1.0
    lut.setflags(write=False)
    return lut


# Read-only and filled once at import: asking matplotlib for a colour map costs ~0.5 ms, and
# every picture needs its table two or three times.
_LUTS = MappingProxyType({style: _make_lut(style) for style in STYLES})


def colour_lut(style: str) -> np.ndarray:
    """The style's 256 full-strength colours, ``(256, 3)`` float32 in [0, 1], read-only. Entry
    ``i`` is the colour of map value ``i / 255`` (``2 i / 255 - 1`` for the signed
    ``diverging`` style): jet and coolwarm exactly as matplotlib samples them, plain green /
    red otherwise."""
    _check_style(style)
    return _LUTS[style]


def _lut_index(display_map: np.ndarray, style: str) -> np.ndarray:
    """LUT row of each value, the way matplotlib indexes a 256-colour map (floor, clipped)."""
    position = (display_map + 1.0) * 0.5 if style == "diverging" else display_map
    index = (position * LUT_SIZE).astype(np.int32)   # truncation = floor for values >= 0
    return np.clip(index, 0, LUT_SIZE - 1, out=index)


def _overlay_inputs(frames, display_map, style: str, lut: Optional[np.ndarray]):
    """Checked ``(frames, display_map float32, full-strength colour per pixel (..., 3))``."""
    _check_style(style)
    display_map = np.asarray(display_map, dtype=np.float32)
    frames = np.asarray(frames)
    if frames.shape[:-1] != display_map.shape or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.shape} and map {display_map.shape} do not match")
    table = colour_lut(style) if lut is None else lut
    return frames, display_map, table.take(_lut_index(display_map, style), axis=0)


def overlay(frames: np.ndarray, display_map: np.ndarray, style: str,
            lut: Optional[np.ndarray] = None) -> np.ndarray:
    """Blend a normalised map onto frames: ``(1 - a) frame + a colour(m)`` with ``a = |m|^0.8``.

    ``style``: ``"jet"`` (the reference's jet overlay), ``"green"`` / ``"red"`` (single-colour
    evidence), or ``"diverging"`` (signed map, blue = against, red = for, coolwarm colours).
    ``frames``: float in [0, 1] or uint8. Returns ``(T, H, W, 3)`` float32 in [0, 1].
    Colours come from a 256-entry table (``lut``, default :func:`colour_lut` of the style),
    not a colour-map call per pixel.
    """
    frames, display_map, colour = _overlay_inputs(frames, display_map, style, lut)
    if frames.dtype == np.uint8:
        frames = frames.astype(np.float32) * (1.0 / 255.0)
    alpha = np.abs(display_map) ** np.float32(0.8)
    alpha = alpha[..., None]
    blended = frames.astype(np.float32, copy=False) * (1.0 - alpha)
    blended += alpha * colour
    return np.clip(blended, 0.0, 1.0, out=blended)


ALPHA_TABLE_SIZE = 4096


def _alpha_table() -> np.ndarray:
    """``(i / 4095) ** 0.8`` for ``i`` in 0..4095: the overlay's opacity by map magnitude."""
    return ((np.arange(ALPHA_TABLE_SIZE, dtype=np.float64) / (ALPHA_TABLE_SIZE - 1))
            ** 0.8).astype(np.float32)


def overlay_uint8(frames: np.ndarray, display_map: np.ndarray, style: str,
                  lut: Optional[np.ndarray] = None) -> np.ndarray:
    """:func:`overlay` as ``uint8`` (``to_uint8(overlay(...))`` to within one level of 255), in
    fewer passes over the pixels: ``frame + a (colour - frame)`` on the 0-255 scale, rounded.
    The blend of values in [0, 1] with ``a`` in [0, 1] stays in range, so only ``a`` is clipped.
    What the writers use; :func:`overlay` stays the float reference."""
    frames, display_map, colour = _overlay_inputs(frames, display_map, style, lut)
    # a = |m|^0.8 from a 4096-entry table (off by < 0.2 of a level on the 0-255 scale; pow
    # per pixel costs more than the rest of the blend)
    steps = ALPHA_TABLE_SIZE - 1
    position = np.abs(display_map) * np.float32(steps) + np.float32(0.5)
    np.minimum(position, np.float32(steps), out=position)
    alpha = _alpha_table().take(position.astype(np.int32))
    colour = colour.astype(np.float32, copy=False) * np.float32(255.0)   # (..., 3) on 0-255
    base = to_uint8(frames).astype(np.float32)
    colour -= base
    colour *= alpha[..., None]
    colour += base
    colour += np.float32(0.5)
    return colour.astype(np.uint8)


def colour_bar_colours(style: str, values: np.ndarray, lut: Optional[np.ndarray] = None) -> np.ndarray:
    """What a mid-grey pixel looks like under the overlay at each map value: the colours the
    colour bars show, ``(N, 3)`` float in [0, 1]."""
    values = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    grey = np.full(values.shape + (3,), BAR_BACKGROUND, dtype=np.float32)
    return overlay(grey, values, style, lut)[:, 0]


def _to_rgb8(colour: np.ndarray) -> Colour:
    return tuple(int(round(float(c) * 255)) for c in colour)  # type: ignore[return-value]


def legend_entries(style: str, target: str, polarity: str = "positive") -> List[Tuple[Colour, str]]:
    """Words for the colours, each with the full-strength colour it names: ``(rgb, text)``."""
    _check_style(style)
    full = colour_lut(style)
    if style == "diverging":
        return [(_to_rgb8(full[-1]), f"red: for {target}"),
                (_to_rgb8(full[0]), f"blue: against {target}")]
    if style == "green":
        return [(_to_rgb8(full[-1]), f"green: for {target}")]
    if style == "red":
        return [(_to_rgb8(full[-1]), f"red: against {target}")]
    direction = "against" if polarity == "negative" else "for"
    return [(_to_rgb8(full[-1]), f"dark red: strongest evidence {direction} {target}"),
            (_to_rgb8(full[LUT_SIZE // 2]), "green: half as strong")]


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

def title_text(clip: str, label: Optional[str], prediction: str, probability: float,
               target: str, method: str, model: str, extra: Sequence[str] = ()) -> str:
    parts = [f"{clip}", f"label: {label or 'unknown'}",
             (f"prediction: {prediction}" + (f" ({probability:.2f})" if probability == probability else ""))
             if prediction else "",
             f"explained: {target}", f"{method} / {model}", *extra]
    return "   |   ".join(p for p in parts if p)


@dataclass(frozen=True)
class Caption:
    """What the pictures of one map say about it. ``probability``: NaN when there is none
    (regression); ``extra``: further facts, e.g. :func:`layer_text` or a perturbation area."""

    clip: str
    label: Optional[str]
    prediction: str
    probability: float
    target: str
    method: str
    model: str
    polarity: str = "positive"
    extra: Sequence[str] = ()

    def prediction_text(self) -> str:
        if not self.prediction:
            return ""
        probability = f" ({self.probability:.2f})" if self.probability == self.probability else ""
        return f"prediction: {self.prediction}{probability}"

    def title_lines(self) -> List[str]:
        """Grid title: clip; label, prediction, target; method, model, extras, polarity."""
        facts = [f"label: {self.label or 'unknown'}", self.prediction_text(), f"explained: {self.target}"]
        setup = [f"{self.method} / {self.model}", *self.extra, f"polarity: {self.polarity}"]
        return [self.clip, "   ".join(p for p in facts if p), "   ".join(p for p in setup if p)]

    def header_lines(self) -> List[str]:
        """Animation header: the same facts, shorter lines."""
        facts = [f"label: {self.label or 'unknown'}", self.prediction_text()]
        return [self.clip, "   ".join(p for p in facts if p),
                f"explained: {self.target}   {self.method} / {self.model}"]


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


def _scale_for(height: int, width: int, min_side: int) -> int:
    return max(1, int(math.ceil(min_side / max(1, min(height, width)))))


def _fill(canvas: np.ndarray, box: Box, colour: Sequence[int]) -> None:
    x0, y0, x1, y1 = box
    canvas[y0:y1, x0:x1] = colour


def _paint_colour_bar(canvas: np.ndarray, box: Box, style: str, lut: np.ndarray) -> None:
    """Vertical colour bar: top = +1, bottom = 0 (or -1 for signed styles)."""
    x0, y0, x1, y1 = box
    low = -1.0 if is_signed_style(style) else 0.0
    values = np.linspace(1.0, low, y1 - y0, dtype=np.float32)
    colours = to_uint8(colour_bar_colours(style, values, lut))
    canvas[y0:y1, x0:x1] = colours[:, None, :]


def colour_bar_ticks(style: str) -> List[Tuple[float, str]]:
    """Tick values and labels of the colour bar."""
    if is_signed_style(style):
        return [(1.0, "+1"), (0.0, "0"), (-1.0, "-1")]
    return [(1.0, "1"), (0.5, "0.5"), (0.0, "0")]


def _tick_y(box: Box, style: str, value: float) -> int:
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


_MARGIN, _GAP, _BAR_W, _BAR_TEXT = 10, 2, 14, 34
_CHART_H = 56


def grid_layout(num_frames: int, height: int, width: int, title_lines: Sequence[str] = (),
                legend: Optional[Sequence[Tuple[Colour, str]]] = None, importance: bool = True,
                attention: bool = False, time_note: Optional[str] = None,
                min_tile: int = 112, fonts: Optional[Typesetter] = None) -> GridLayout:
    """Geometry of :func:`render_grid_image` for ``num_frames`` frames of ``height x width``."""
    if num_frames < 1:
        raise ValueError("a frame grid needs at least one frame")
    scale = _scale_for(height, width, min_tile)
    tile_h, tile_w = height * scale, width * scale
    font_size = 13
    title_size = 15
    title_font = font_for(title_size, fonts)
    columns = min(GRID_COLUMNS, num_frames)
    grid_w = columns * tile_w + (columns - 1) * _GAP
    total_w = 2 * _MARGIN + grid_w + 8 + _BAR_W + 4 + _BAR_TEXT
    text_w = total_w - 2 * _MARGIN
    lines: List[str] = []
    for line in title_lines:
        lines.extend(_wrap(title_font, line, text_w))
    y = _MARGIN
    title_y = []
    for _ in lines:
        title_y.append(y)
        y += title_size + 5
    items: List[Tuple[Colour, str, int, int]] = []
    if legend:
        items, y = _flow_legend(font_for(font_size, fonts), legend, _MARGIN, y, text_w, 13, font_size + 5)
    y += 6
    blocks = -(-num_frames // GRID_COLUMNS)
    frame_boxes, overlay_boxes, bars = [], [], []
    for block in range(blocks):
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
    total_h = y + _MARGIN
    return GridLayout(total_w, total_h, scale, tuple(lines), tuple(title_y), tuple(items),
                      tuple(frame_boxes), tuple(overlay_boxes), tuple(bars), tuple(charts), note_y,
                      font_size, title_size)


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


def render_grid_image(frames: np.ndarray, overlays: np.ndarray, title_lines: Sequence[str],
                      importance: Optional[np.ndarray] = None,
                      attention: Optional[np.ndarray] = None, colour_style: str = "jet",
                      legend: Optional[Sequence[Tuple[Colour, str]]] = None,
                      time_note: Optional[str] = None, min_tile: int = 112,
                      fonts: Optional[Typesetter] = None) -> np.ndarray:
    """The frame grid as one RGB picture, ``(height, width, 3)`` uint8: 8 columns; per block of 8 frames a row of frames and a
    row of overlays, a colour bar with ticks beside each overlay row; above, the title lines
    and the legend (:func:`legend_entries`); below, the map's share per frame, the model's
    attention per frame (when given) and ``time_note``. Tiles are upscaled (nearest) to at
    least ``min_tile`` pixels. ``frames``, ``overlays``: ``(T, H, W, 3)`` float or uint8."""
    frames, overlays = np.asarray(frames), np.asarray(overlays)
    if frames.shape != overlays.shape or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.shape} and overlays {overlays.shape} must both be (T, H, W, 3)")
    num_frames, height, width = frames.shape[:3]
    for name, values in (("importance", importance), ("attention", attention)):
        if values is not None and len(values) != num_frames:
            raise ValueError(f"{name} has {len(values)} values for {num_frames} frames")
    fonts = fonts or Typesetter()
    layout = grid_layout(num_frames, height, width, title_lines, legend, importance is not None,
                         attention is not None, time_note, min_tile, fonts)
    canvas = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)
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
        _paint_bars(canvas, box, values, colour, 1.0 / num_frames if name == "importance" else None)
    for colour, _, x, y in layout.legend_items:
        _fill(canvas, (x, y + 2, x + 13, y + 15), colour)

    image = canvas                          # texts are stamped onto the array in place
    font, title_font = font_for(layout.font_size, fonts), font_for(layout.title_size, fonts)
    for line, y in zip(layout.title_lines, layout.title_y):
        title_font.draw(image, (_MARGIN, y), line, BLACK)
    for _, text, x, y in layout.legend_items:
        font.draw(image, (x + 18, y + 1), text, BLACK)
    for t, box in enumerate(layout.frame_boxes):
        font.draw(image, (box[0] + 2, box[1] - layout.font_size - 2), f"t={t}", GREY_TEXT)
    for bar in layout.colour_bars:
        for value, text in colour_bar_ticks(colour_style):
            y = _tick_y(bar, colour_style, value)
            _fill(canvas, (bar[2], y, bar[2] + 4, y + 1), BLACK)      # the tick mark
            font.draw(image, (bar[2] + 5, y - layout.font_size // 2 - 1), text, BLACK)
    for name, box, label_y in layout.charts:
        values = importance if name == "importance" else attention
        peak = float(np.nanmax(values)) if len(values) else 0.0
        label = ("map share per frame (dotted: uniform 1/T)" if name == "importance"
                 else "model attention per frame") + f", max {peak:.3f}"
        _draw_chart_text(image, font, box, label_y, label, num_frames)
    if time_note and layout.time_note_y is not None:
        font.draw(image, (_MARGIN, layout.time_note_y), time_note, GREY_TEXT)
    return image


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
                     fonts: Optional[Typesetter] = None) -> AnimationLayout:
    """Geometry of :func:`animation_frames` for frames of ``height x width``."""
    scale = _scale_for(height, width, min_side)
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
                           font_size)


def animation_frames(frames: np.ndarray, overlays: np.ndarray, header_lines: Sequence[str] = (),
                     importance: Optional[np.ndarray] = None, attention: Optional[np.ndarray] = None,
                     colour_style: str = "jet", legend: Optional[Sequence[Tuple[Colour, str]]] = None,
                     time_note: Optional[str] = None, min_side: int = 224,
                     fonts: Optional[Typesetter] = None) -> np.ndarray:
    """One picture per frame, ``(T, height, width, 3)`` uint8 with even sides: header lines
    (clip, label, prediction, target, method), the frame and its overlay side by side with a
    colour bar, and the per-frame charts with a cursor under the current frame's bars."""
    return animation(frames, overlays, header_lines, importance, attention, colour_style, legend,
                     time_note, min_side, fonts)[0]


def animation(frames: np.ndarray, overlays: np.ndarray, header_lines: Sequence[str] = (),
              importance: Optional[np.ndarray] = None, attention: Optional[np.ndarray] = None,
              colour_style: str = "jet", legend: Optional[Sequence[Tuple[Colour, str]]] = None,
              time_note: Optional[str] = None, min_side: int = 224,
              fonts: Optional[Typesetter] = None) -> Tuple[np.ndarray, AnimationLayout]:
    """:func:`animation_frames` and the layout they were drawn with (whose
    :meth:`AnimationLayout.changing_boxes` tell an encoder what differs between frames)."""
    frames, overlays = np.asarray(frames), np.asarray(overlays)
    if frames.shape != overlays.shape or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames {frames.shape} and overlays {overlays.shape} must both be (T, H, W, 3)")
    num_frames, height, width = frames.shape[:3]
    for name, values in (("importance", importance), ("attention", attention)):
        if values is not None and len(values) != num_frames:
            raise ValueError(f"{name} has {len(values)} values for {num_frames} frames")
    fonts = fonts or Typesetter()
    layout = animation_layout(height, width, header_lines, legend, importance is not None,
                              attention is not None, time_note, min_side, fonts)
    base = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)
    _paint_colour_bar(base, layout.colour_bar, colour_style, colour_lut(colour_style))
    chart_values = {"importance": (importance, IMPORTANCE_COLOUR), "attention": (attention, ATTENTION_COLOUR)}
    for name, box, _ in layout.charts:
        values, colour = chart_values[name]
        _paint_bars(base, box, values, colour, 1.0 / num_frames if name == "importance" else None)
    for colour, _, x, y in layout.legend_items:
        _fill(base, (x, y + 2, x + 11, y + 13), colour)
    image = base                            # texts are stamped onto the array in place
    font = font_for(layout.font_size, fonts)
    for line, y in zip(layout.header_lines, layout.header_y):
        font.draw(image, (_MARGIN, y), line, BLACK)
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
    for t in range(num_frames):
        for (_, y0, _, y1), slots in cursors:
            start, stop = slots[t]
            pictures[t, y0:y1, start:stop] = CURSOR_COLOUR
        counter = pictures[t, cy0:cy1, cx0:cx1]
        counter[...] = WHITE
        font.draw(counter, (0, 0), f"t={t}", BLACK)
    return pictures, layout


def gif_frames(frames: np.ndarray, overlays: np.ndarray, min_side: int = 224) -> list:
    """Frames for a plain animation: the clip and its overlay side by side, upscaled for small
    clips (no captions; :func:`animation_frames` adds them)."""
    scale = _scale_for(frames.shape[1], frames.shape[2], min_side)
    pairs = upscale(np.concatenate([to_uint8(frames), to_uint8(overlays)], axis=2), scale)
    return [Image.fromarray(pair) for pair in pairs]


# ----------------------------------------------------------------------------- matplotlib (old)

def render_grid_matplotlib(frames: np.ndarray, overlays: np.ndarray, title: str,
                           importance: Optional[np.ndarray] = None,
                           attention: Optional[np.ndarray] = None) -> Figure:
    """The earlier matplotlib figure of the grid (kept for comparison in the render bench;
    :func:`render_grid_image` replaces it and is ~10x faster)."""
    from matplotlib.figure import Figure
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


render_grid = render_grid_matplotlib   # the earlier name, kept for library users
