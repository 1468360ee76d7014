"""Pictures of a windowed run over a long video: the timeline of class probabilities (a figure)
and the frames of the whole-video MP4 (the model's view with the map of the window that covers
the frame, over a strip of the timeline with a cursor at the frame's time)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from utils.render import figures as visualize

# one colour per shown class (matplotlib's tab10), grey for the rest
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                    (148, 103, 189), (140, 86, 75), (227, 119, 194), (188, 189, 34),
                    (23, 190, 207), (127, 127, 127)], dtype=np.uint8)
MAX_SHOWN = 8
STRIP_HEIGHT = 48
TEXT_HEIGHT = 18
MIN_SIDE = 224


def shown_classes(probabilities: np.ndarray, names: Sequence[str],
                  limit: int = MAX_SHOWN) -> List[int]:
    """The classes worth a line: those that are the top class in some window (most windows
    first), then the highest mean probability, at most ``limit``. ``probabilities``: ``(W, K)``
    with NaN rows for failed windows."""
    valid = probabilities[~np.isnan(probabilities).any(axis=1)]
    if not len(valid):
        return []
    tops, counts = np.unique(valid.argmax(axis=1), return_counts=True)
    order = [int(k) for k in tops[np.argsort(-counts, kind="stable")]]
    for k in np.argsort(-valid.mean(axis=0), kind="stable"):
        if len(order) >= min(limit, len(names)):
            break
        if int(k) not in order:
            order.append(int(k))
    return order[:limit]


def timeline_figure(starts: np.ndarray, ends: np.ndarray, probabilities: np.ndarray,
                    names: Sequence[str], target_probability: np.ndarray,
                    evidence: np.ndarray, title: str, target_text: str) -> Figure:
    """Top: the probability of the shown classes in each window over time (steps span each
    window; grey bands: failed windows). Bottom: the explained class's probability and its
    evidence (the map's mean, relative to the largest window's) per window."""
    shown = shown_classes(probabilities, names)
    figure = Figure(figsize=(10, 5.2))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    centres = (starts + ends) / 2
    failed = np.isnan(probabilities).any(axis=1) if probabilities.size else np.zeros(0, bool)
    for axis in (top, bottom):
        for s, e in zip(starts[failed], ends[failed]):
            axis.axvspan(s, e, color="0.85", lw=0)
    for rank, k in enumerate(shown):
        colour = PALETTE[rank % len(PALETTE)] / 255.0
        top.step(np.r_[starts, ends[-1:]], np.r_[probabilities[:, k], probabilities[-1:, k]],
                 where="post", color=colour, lw=1.4, label=names[k])
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("probability")
    if shown:
        top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    else:
        top.text(0.5, 0.5, "no window was classified", ha="center", transform=top.transAxes)
    top.set_title(title, fontsize=10)
    bottom.plot(centres, target_probability, "o-", ms=3, color="k", lw=1,
                label=f"p({target_text})")
    scale = np.nanmax(evidence) if np.isfinite(evidence).any() else 0.0
    if scale > 0:
        bottom.plot(centres, evidence / scale, "s--", ms=3, color="tab:red", lw=1,
                    label="evidence\n(map mean / max)")
    else:
        bottom.text(0.5, 0.5, "the maps show no evidence in any window", ha="center",
                    transform=bottom.transAxes)
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlabel("time in the video (s)")
    bottom.set_ylabel("explained class")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.07, right=0.72, top=0.92, bottom=0.1, hspace=0.12)
    return figure


def strip_image(starts: np.ndarray, ends: np.ndarray, probabilities: np.ndarray,
                shown: Sequence[int], width: int, duration: float,
                height: int = STRIP_HEIGHT) -> np.ndarray:
    """``uint8 (height, width, 3)``: at each column (a moment of the video), the shown
    classes' probabilities in the window covering it stacked bottom up; failed windows
    hatched grey, uncovered time white."""
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    if duration <= 0 or not len(starts):
        return strip
    times = (np.arange(width) + 0.5) / width * duration
    centres = (starts + ends) / 2
    for x, t in enumerate(times):
        inside = np.flatnonzero((starts <= t) & (t < ends))
        if not len(inside):
            continue
        w = inside[np.argmin(np.abs(centres[inside] - t))]
        row = probabilities[w]
        if np.isnan(row).any():
            strip[::4, x] = 150
            continue
        y = height
        for rank, k in enumerate(shown):
            size = int(round(float(row[k]) * height))
            if size:
                strip[max(0, y - size):y, x] = PALETTE[rank % len(PALETTE)]
            y -= size
    return strip


def cursor_x(time: float, duration: float, width: int) -> int:
    return int(np.clip(np.floor(time / duration * width), 0, width - 1)) if duration > 0 else 0


def video_frame(picture: np.ndarray, display_map: Optional[np.ndarray], style: str,
                strip: np.ndarray, time: float, duration: float, caption: str,
                fonts: Optional[visualize.Typesetter] = None) -> np.ndarray:
    """One frame of the whole-video MP4: the caption, the model's view (``uint8 (S, S, 3)``)
    with the map overlaid (``None``: the frame's window failed, shown without a map), and the
    timeline strip with the cursor at ``time``."""
    scale = max(1, -(-MIN_SIDE // max(1, min(picture.shape[:2]))))
    view = picture if display_map is None else \
        visualize.overlay_uint8(picture[None], display_map[None], style)[0]
    view = visualize.upscale(view, scale)
    height, width = view.shape[:2]
    strip = strip if strip.shape[1] == width else \
        strip[:, np.minimum(np.arange(width) * strip.shape[1] // width, strip.shape[1] - 1)]
    canvas = np.full((TEXT_HEIGHT + height + strip.shape[0] + 2, width, 3), 255, dtype=np.uint8)
    font = visualize.font_for(11, fonts)
    font.draw(canvas, (3, 3), visualize.fit_text(font, caption, width - 6), (0, 0, 0))
    canvas[TEXT_HEIGHT:TEXT_HEIGHT + height] = view
    top = TEXT_HEIGHT + height + 2
    canvas[top:] = strip
    x = cursor_x(time, duration, width)
    canvas[top:, max(0, x - 1):x + 1] = (0, 0, 0)
    if canvas.shape[0] % 2:
        canvas = np.concatenate([canvas, np.full((1, width, 3), 255, np.uint8)])
    return canvas


def strip_legend(shown: Sequence[int], names: Sequence[str]) -> List[Tuple[Tuple[int, int, int], str]]:
    return [(tuple(int(c) for c in PALETTE[r % len(PALETTE)]), names[k])
            for r, k in enumerate(shown)]
